// Cormorant web console: plain JavaScript and SVG, no framework, nothing fetched from elsewhere.
// Every figure on screen comes from the public /api/v1 the CLI uses; the session cookie
// authenticates, and X-CSRF-Token (from the page's meta tag) goes with every change.
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const main = document.getElementById("main");
  const TABS = [
    ["charts", "Charts"],
    ["logs", "Logs"],
    ["predictions", "Predictions"],
    ["config", "Config"],
    ["continual-learning", "Continual Learning"],
    ["feedback", "Feedback loop"],
    ["monitoring", "Monitoring"],
  ];
  // Every poll of the view on screen, stopped when it changes.
  let polls = [];
  // The endpoint page on screen ({slug, tabs, panel}): a tab change redraws only its panel.
  let shown = null;
  const tokens = {};
  const customMetrics = {};

  class ApiError extends Error {
    constructor(status, message, field) {
      super(message);
      this.status = status;
      // The request field the API named as wrong (details.field, or the message's "field: ").
      this.field = field;
    }
  }

  // One call to the public API; JSON (or a FormData upload) in, JSON out, the API's own
  // message on errors.
  async function api(method, path, body, headers = {}) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
    if (method !== "GET") init.headers["X-CSRF-Token"] = csrf;
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch("/api/v1" + path, init);
    const text = await res.text();
    let data = text;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      // Not JSON: keep the text.
    }
    if (res.status === 401 && !headers.Authorization) {
      location.assign("/console");
    }
    if (!res.ok) {
      const error = data && data.error ? data.error : {};
      const message = error.message || `HTTP ${res.status}`;
      throw new ApiError(res.status, message, error.details && error.details.field);
    }
    return data;
  }

  // A DOM element from a tag, attributes and children (text children are never parsed as HTML).
  function h(tag, attrs = {}, ...children) {
    const node = document.createElementNS(
      tag === "svg" || attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml",
      tag,
    );
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "svg" || value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const s = (tag, attrs = {}, ...children) => h(tag, { ...attrs, svg: true }, ...children);

  function stopTimers() {
    for (const stop of polls) stop();
    polls = [];
  }

  // Calls fn every ms while `within` is on the page: the next call is scheduled only once the
  // previous one settled, so a slow API never piles calls up. Returns its stop function;
  // stopTimers (any view change) stops it too.
  function poll(fn, ms, within) {
    let id = null;
    let stopped = false;
    const tick = () => {
      if (stopped || !within.isConnected) return;
      id = setTimeout(() => Promise.resolve().then(fn).finally(tick), ms);
    };
    const stop = () => {
      stopped = true;
      clearTimeout(id);
    };
    polls.push(stop);
    tick();
    return stop;
  }

  function show(...nodes) {
    stopTimers();
    shown = null;
    main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
  }

  // Pages answer after their API calls: one left meanwhile must not draw over the next.
  let navigation = 0;
  function screen() {
    const at = navigation;
    return (...nodes) => {
      if (at === navigation) show(...nodes);
      return at === navigation;
    };
  }

  function failure(error) {
    return h("p", { class: "error", role: "alert" }, error.message);
  }

  const pct = (weights) =>
    Object.entries(weights || {})
      .filter(([, w]) => w > 0)
      .map(([v, w]) => `v${v} ${w} %`)
      .join(" · ") || "—";

  // ---- Endpoints list -------------------------------------------------------------------
  async function listPage() {
    const view = screen();
    document.title = "Endpoints · Cormorant console";
    const heading = h("h1", {}, "Endpoints");
    view(heading, h("p", {}, "Loading…"));
    let endpoints;
    try {
      endpoints = (await api("GET", "/endpoints")).endpoints;
    } catch (error) {
      view(heading, failure(error));
      return;
    }
    if (endpoints.length === 0) {
      view(heading, h("p", {}, "No endpoints yet: create one with New endpoint, or cormorant deploy <folder>."));
      return;
    }
    const rows = endpoints.map((e) => {
      const traffic = h("td", { "data-label": "Traffic" }, "…");
      api("GET", `/endpoints/${encodeURIComponent(e.slug)}/traffic`)
        .then((t) => traffic.replaceChildren(pct(t.weights)))
        .catch(() => traffic.replaceChildren("—"));
      const load = h("td", { "data-label": "Requests/min" }, "…");
      api("GET", `/endpoints/${encodeURIComponent(e.slug)}/charts?series=requests_per_minute&window=1h`)
        .then((c) => load.replaceChildren(sparkline(c.points)))
        .catch(() => load.replaceChildren("—"));
      return h(
        "tr",
        {},
        h("th", { scope: "row", "data-label": "Endpoint" },
          h("a", { href: `#/endpoints/${encodeURIComponent(e.slug)}` }, e.name),
          h("span", { class: "slug" }, e.slug)),
        h("td", { "data-label": "Kind" }, e.kind),
        h("td", { "data-label": "Status" }, h("span", { class: `status ${e.status}` }, e.status)),
        h("td", { "data-label": "Replicas" }, `${e.replicas.ready} ready / ${e.replicas.desired}`),
        traffic,
        load,
      );
    });
    view(
      heading,
      h("div", { class: "scroll" },
        h("table", { class: "endpoints" },
          h("caption", { class: "sr-only" }, "Endpoints, newest first"),
          h("thead", {}, h("tr", {}, ["Endpoint", "Kind", "Status", "Replicas", "Traffic", "Requests/min (1 h)"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, rows))),
    );
  }

  // ---- Endpoint page ------------------------------------------------------------------
  async function endpointPage(slug, tab) {
    const view = screen();
    const chosen = TABS.some(([id]) => id === tab) ? tab : "charts";
    if (!shown || shown.slug !== slug) {
      let endpoint;
      try {
        endpoint = await api("GET", `/endpoints/${encodeURIComponent(slug)}`);
      } catch (error) {
        view(h("p", {}, h("a", { href: "#/" }, "← Endpoints")), h("h1", {}, slug), failure(error));
        return;
      }
      document.title = `${endpoint.name} · Cormorant console`;
      const panel = h("div", { id: "panel", role: "tabpanel", tabindex: "0" });
      const tabs = TABS.map(([id, label]) =>
        h("a", {
          role: "tab",
          id: `tab-${id}`,
          href: `#/endpoints/${encodeURIComponent(slug)}/${id}`,
          "aria-controls": "panel",
        }, label));
      const drawn = view(
        h("p", {}, h("a", { href: "#/" }, "← Endpoints")),
        h("h1", {}, endpoint.name, " ", h("span", { class: `status ${endpoint.status}` }, endpoint.status)),
        h("p", {}, h("a", { class: "button", href: `#/rerun/${encodeURIComponent(slug)}` }, "Rerun"),
          h("span", { class: "help" }, " A new endpoint prefilled from this one: check the details, change, run.")),
        summary(endpoint),
        endpoint.kind === "web" ? tryIt(endpoint) : null,
        h("div", { role: "tablist", "aria-label": "Endpoint views", class: "tabs", onkeydown: tabKeys }, tabs),
        panel,
      );
      if (!drawn) return;
      shown = { slug, endpoint, tabs, panel };
    }
    stopTimers();
    const { endpoint, tabs, panel } = shown;
    for (const node of tabs) {
      const selected = node.id === `tab-${chosen}`;
      node.setAttribute("aria-selected", selected ? "true" : "false");
      node.setAttribute("tabindex", selected ? "0" : "-1");
      // On a narrow screen the tab strip scrolls: keep the chosen tab in sight.
      if (selected) node.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
    panel.setAttribute("aria-labelledby", `tab-${chosen}`);
    // A fresh box per visit: a slow answer for a tab left meanwhile lands nowhere.
    const content = h("div");
    panel.replaceChildren(content);
    const fill = {
      charts: chartsTab, logs: logsTab, predictions: predictionsTab, config: configTab,
      "continual-learning": triggersTab, feedback: feedbackTab, monitoring: monitoringTab,
    }[chosen];
    await fill(endpoint, content);
  }

  // Arrow keys move between tabs, as in the WAI-ARIA tabs pattern.
  function tabKeys(event) {
    const tabs = [...event.currentTarget.querySelectorAll('[role="tab"]')];
    const at = tabs.indexOf(document.activeElement);
    if (at < 0) return;
    const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    const target = tabs[(next + tabs.length) % tabs.length];
    // The roving tabindex moves now, not when the tab's page is drawn: a Tab pressed before
    // that must enter the panel, not land on the tab that was selected.
    for (const tab of tabs) tab.setAttribute("tabindex", tab === target ? "0" : "-1");
    target.focus();
    target.click();
  }

  function summary(e) {
    const items = [
      ["Slug", e.slug],
      ["Kind", e.kind],
      ["Version", e.version ? `v${e.version}` : "—"],
      ["Replicas", `${e.replicas.ready} ready of ${e.replicas.desired} (min ${e.replicas.min}, max ${e.replicas.max})`],
      ["Predict URL", e.predict_url],
      ["Function", `${e.file}:${e.function}`],
    ];
    if (e.reason) items.push(["Reason", e.reason]);
    return h("dl", { class: "summary" }, items.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function tryIt(endpoint) {
    const out = h("pre", { id: "try-output", class: "output", "aria-live": "polite" });
    // Kept in this page's memory only, so switching tabs does not ask for it again.
    const token = h("input", {
      id: "try-token", type: "password", autocomplete: "off", required: true,
      value: tokens[endpoint.slug] || "",
      oninput: (event) => { tokens[endpoint.slug] = event.target.value; },
    });
    const input = h("textarea", { id: "try-input", rows: "3", "aria-describedby": "try-help" }, '"hello"');
    async function send(event) {
      event.preventDefault();
      let value = input.value;
      try {
        value = JSON.parse(input.value);
      } catch (_) {
        // Not JSON: sent as the string typed.
      }
      out.textContent = "Sending…";
      try {
        const answer = await api("POST", `/endpoints/${encodeURIComponent(endpoint.slug)}/predict`, { input_params: value }, { Authorization: `Bearer ${token.value.trim()}` });
        out.textContent = JSON.stringify(answer, null, 2);
      } catch (error) {
        out.textContent = `Error ${error.status}: ${error.message}`;
      }
    }
    return h("section", { class: "try", "aria-labelledby": "try-heading" },
      h("h2", { id: "try-heading" }, "Try it"),
      h("form", { onsubmit: send },
        h("label", { for: "try-token" }, "Endpoint token"),
        token,
        h("label", { for: "try-input" }, "Input (JSON; a list is spread as arguments)"),
        input,
        h("p", { id: "try-help", class: "help" }, "The token was shown once when the endpoint was created; the console keeps it only while this page is open."),
        h("button", { type: "submit" }, "Send")),
      out);
  }

  // ---- Charts ---------------------------------------------------------------------------
  async function chartsTab(endpoint, panel) {
    const slug = encodeURIComponent(endpoint.slug);
    // Custom metrics chosen on this page, kept while it is open.
    const keys = (customMetrics[endpoint.slug] ||= []);
    const windowSelect = h("select", { id: "chart-window" },
      ["15m", "1h", "24h"].map((w) => h("option", { value: w, selected: w === "1h" }, w)));
    const charts = h("div", { class: "charts" });
    const series = (name) => api("GET", `/endpoints/${slug}/charts?series=${encodeURIComponent(name)}&window=${windowSelect.value}`);
    async function draw() {
      try {
        const [requests, latency, ...metrics] = await Promise.all(
          ["requests_per_minute", "latency", ...keys].map(series));
        charts.replaceChildren(
          lineChart("Requests per minute", requests.points, [["value", "requests"]]),
          lineChart("Latency (ms)", latency.points, [["p50", "p50"], ["p95", "p95"], ["p99", "p99"]]),
          ...metrics.map((m, i) => lineChart(`Metric ${keys[i]}`, m.points, [["avg", "avg"], ["min", "min"], ["max", "max"]])),
        );
      } catch (error) {
        showFailure(charts, error);
      }
    }
    const keyInput = h("input", { id: "metric-key", type: "text", autocomplete: "off", "aria-describedby": "metric-help" });
    const addMetric = (event) => {
      event.preventDefault();
      const key = keyInput.value.trim();
      if (key && !keys.includes(key)) keys.push(key);
      keyInput.value = "";
      draw();
    };
    windowSelect.addEventListener("change", draw);
    panel.append(
      h("h2", {}, "Charts"),
      h("div", { class: "row" }, h("label", { for: "chart-window" }, "Window"), windowSelect,
        h("span", { class: "help" }, "Refreshes every 10 s.")),
      h("form", { class: "row", onsubmit: addMetric },
        h("label", { for: "metric-key" }, "Custom metric"), keyInput,
        h("button", { type: "submit" }, "Add chart"),
        h("span", { id: "metric-help", class: "help" }, "A key logged with log_metric, e.g. accuracy.")),
      charts);
    await draw();
    poll(draw, 10000, panel);
  }

  // An SVG line chart of points {t, ...}; one line per [key, label].
  function lineChart(title, points, series) {
    const W = 600, H = 200, L = 48, B = 24, T = 10, R = 10;
    const values = points.flatMap((p) => series.map(([k]) => p[k])).filter((v) => typeof v === "number");
    const max = Math.max(1, ...values);
    const times = points.map((p) => Date.parse(p.t));
    const t0 = Math.min(...times), t1 = Math.max(...times);
    const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - L - R) : (W - L - R) / 2);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const last = points.length ? points[points.length - 1] : null;
    const described = series
      .map(([k, label]) => {
        const total = points.reduce((sum, p) => sum + (typeof p[k] === "number" ? p[k] : 0), 0);
        const latest = last && last[k] != null ? last[k] : "none";
        return series.length === 1 ? `${label} total ${fmt(total)}, latest ${latest}` : `${label} latest ${latest}`;
      })
      .join(", ");
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${points.length} minutes, maximum ${max}, ${described}` },
      s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
      s("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
      s("text", { x: L - 6, y: T + 4, "text-anchor": "end", class: "tick" }, fmt(max)),
      s("text", { x: L - 6, y: H - B, "text-anchor": "end", class: "tick" }, "0"),
      points.length
        ? [
            s("text", { x: L, y: H - 6, class: "tick" }, clock(points[0].t)),
            s("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "tick" }, clock(points[points.length - 1].t)),
          ]
        : s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, "no data in this window"),
      series.map(([key], i) => {
        const pts = points.filter((p) => typeof p[key] === "number");
        if (pts.length === 1) {
          return s("circle", { cx: x(Date.parse(pts[0].t)), cy: y(pts[0][key]), r: 3, class: `line s${i}` });
        }
        return s("polyline", { points: pts.map((p) => `${x(Date.parse(p.t)).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "), class: `line s${i}` });
      }));
    const legend = series.length > 1
      ? h("ul", { class: "legend" }, series.map(([, label], i) => h("li", { class: `s${i}` }, label)))
      : null;
    return h("figure", { class: "chart" }, h("figcaption", {}, title), svg, legend);
  }
  // A small line of requests per minute for the endpoints list.
  function sparkline(points) {
    const W = 120, H = 28;
    const max = Math.max(0, ...points.map((p) => p.value));
    const total = points.reduce((sum, p) => sum + p.value, 0);
    const step = points.length > 1 ? W / (points.length - 1) : 0;
    // An idle hour draws a flat line at the bottom (no division by a zero maximum).
    const scale = Math.max(1, max);
    const line = points.map((p, i) => `${(i * step).toFixed(1)},${(H - 2 - (p.value / scale) * (H - 4)).toFixed(1)}`).join(" ");
    return s("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": `${total} request${total === 1 ? "" : "s"} in the last hour, at most ${max} a minute` },
      s("polyline", { points: line, class: "line s0" }));
  }

  const fmt = (v) => (v >= 100 ? Math.round(v) : Math.round(v * 100) / 100).toString();
  const clock = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

  // ---- Logs -----------------------------------------------------------------------------
  async function logsTab(endpoint, panel) {
    const slug = encodeURIComponent(endpoint.slug);
    const body = h("div", { class: "scroll", id: "logs" });
    const f = {};
    const general = h("p", { class: "error", role: "alert", tabindex: "-1" });
    const status = select({}, [["", "Any"], ["ok", "OK"], ["error", "Errors"], ["2xx", "2xx"], ["4xx", "4xx"], ["5xx", "5xx"]], "");
    const version = input({ inputmode: "numeric", size: "4" });
    const q = input({ type: "search" });
    const follow = h("input", { type: "checkbox" });
    const exportLink = h("a", { class: "button", download: `${endpoint.slug}-logs.csv` }, "Export CSV");
    const query = () => {
      const params = new URLSearchParams();
      if (status.value) params.set("status", status.value);
      if (version.value.trim()) params.set("version", version.value.trim());
      if (q.value.trim()) params.set("q", q.value.trim());
      return params.toString();
    };
    async function load() {
      const filters = query();
      exportLink.setAttribute("href", `/api/v1/endpoints/${slug}/logs.csv${filters ? `?${filters}` : ""}`);
      try {
        const page = await api("GET", `/endpoints/${slug}/logs?limit=50${filters ? `&${filters}` : ""}`);
        clearErrors(f, general);
        redraw(body, [filters, page.items], () => page.items.length === 0
          ? h("p", {}, filters ? "No predictions match these filters." : "No predictions logged yet.")
          : h("table", { class: "logs" },
            h("caption", { class: "sr-only" }, "The 50 latest predictions, newest first"),
            h("thead", {}, h("tr", {}, ["Received", "Version", "Status", "Latency (ms)", "Input", "Output or error"].map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, page.items.map((p) => h("tr", {},
              h("td", {}, new Date(p.received_at).toLocaleString()),
              h("td", {}, p.version ? `v${p.version}` : "—"),
              h("td", {}, p.status),
              h("td", {}, p.latency_ms),
              h("td", {}, h("code", {}, JSON.stringify(p.input))),
              h("td", {}, h("code", {}, p.error || JSON.stringify(p.output))))))));
      } catch (error) {
        showErrors(f, general, error);
      }
    }
    const apply = (event) => {
      event.preventDefault();
      load();
    };
    let following = null;
    follow.addEventListener("change", () => {
      if (following !== null) following();
      following = follow.checked ? poll(load, 2000, panel) : null;
    });
    panel.append(
      h("h2", {}, "Logs"),
      h("form", { class: "row filters", onsubmit: apply, novalidate: true },
        field(f, "status", "Status", status),
        field(f, "version", "Version", version),
        field(f, "q", "Text in input, output or error", q),
        h("button", { type: "submit" }, "Filter")),
      general,
      h("div", { class: "row" },
        h("button", { type: "button", onclick: load }, "Refresh"),
        field(null, "", "Follow (every 2 s)", follow),
        exportLink),
      body);
    await load();
  }

  // ---- Config ---------------------------------------------------------------------------
  async function configTab(endpoint, panel) {
    const slug = encodeURIComponent(endpoint.slug);
    const status = h("p", { id: "config-status", role: "status", class: "help" });
    const body = h("div");

    // One change through the API: its button waits, the status line says how it went.
    async function change(button, doing, call, done) {
      button.disabled = true;
      status.textContent = doing;
      try {
        const answer = await call();
        render(answer && answer.weights ? answer : await api("GET", `/endpoints/${slug}/traffic`));
        status.textContent = done(answer);
      } catch (error) {
        status.textContent = `Refused: ${error.message}`;
        button.disabled = false;
      }
    }

    function render(t) {
      const rollback = h("button", {
        type: "button",
        "aria-describedby": "rollback-help",
        disabled: !t.canary,
        onclick: () => change(rollback, "Rolling back…", () => api("POST", `/endpoints/${slug}/rollback`),
          () => "Rolled back: all traffic on the stable version."),
      }, "Roll back");
      const promote = h("button", {
        type: "button",
        disabled: !t.canary,
        onclick: () => change(promote, "Promoting…", () => api("POST", `/endpoints/${slug}/promote`),
          () => `Promoted: all traffic on v${t.canary}.`),
      }, "Promote");
      body.replaceChildren(
        h("dl", { class: "summary" },
          h("dt", {}, "Traffic"), h("dd", { id: "traffic-split" }, pct(t.weights)),
          h("dt", {}, "Stable"), h("dd", {}, t.stable ? `v${t.stable}` : "—"),
          h("dt", {}, "Canary"), h("dd", {}, t.canary ? `v${t.canary}` : "none"),
          h("dt", {}, "Generation"), h("dd", {}, t.generation)),
        h("div", { class: "row" }, rollback, promote,
          h("span", { id: "rollback-help", class: "help" },
            t.canary ? `Roll back sends all traffic to v${t.stable}; Promote to v${t.canary}.` : "No canary to roll back or promote.")),
        h("h3", {}, "Canary rollout"),
        canaryForm(t),
        h("h3", {}, "Update model"),
        versionForm(),
        h("h3", {}, "Versions"),
        h("div", { class: "scroll" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Version", "Role", "Weight", "Status", "Replicas", "Created"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, t.versions.map((v) => h("tr", {},
            h("td", {}, `v${v.version}`), h("td", {}, v.role), h("td", {}, `${v.weight} %`),
            h("td", {}, v.status), h("td", {}, v.replicas.filter((r) => r.state === "ready").length),
            h("td", {}, new Date(v.created_at).toLocaleString())))))),
        h("h3", {}, "Traffic history"),
        t.history.length
          ? h("ol", { class: "history" }, t.history.slice(0, 10).map((e) =>
              h("li", {}, `${new Date(e.time).toLocaleString()}: ${e.action} → ${pct(e.weights)}${e.reason ? ` (${e.reason})` : ""}`)))
          : h("p", {}, "No traffic changes yet."),
        h("p", { class: "coming" }, "Progressive rollouts with checks are coming to this tab; meanwhile: cormorant rollout --policy. Replica events are in the Monitoring tab."));
    }

    // A version other than the stable one, and the share of traffic the slider gives it.
    function canaryForm(t) {
      const candidates = t.versions.filter((v) => v.version !== t.stable && (v.status === "ready" || v.status === "pending"));
      if (!candidates.length) return h("p", { class: "help" }, "No other version to roll out: create one under Update model.");
      const start = t.canary ? t.weights[t.canary] || 10 : 10;
      const version = h("select", { id: "canary-version" },
        candidates.map((v) => h("option", { value: v.version, selected: v.version === t.canary }, `v${v.version} (${v.status})`)));
      const percent = h("input", { id: "canary-percent", type: "range", min: "1", max: "100", step: "1", value: start });
      const shown = h("output", { id: "canary-percent-value", for: "canary-percent" }, `${start} %`);
      percent.addEventListener("input", () => { shown.textContent = `${percent.value} %`; });
      const submit = h("button", { type: "submit" }, "Roll out");
      const send = (event) => {
        event.preventDefault();
        const body = { version: version.value, percent: Number(percent.value) };
        change(submit, `Rolling out v${body.version} to ${body.percent} % once its replicas are ready…`,
          () => api("POST", `/endpoints/${slug}/rollout`, body),
          () => `v${body.version} has ${body.percent} % of the traffic.`);
      };
      return h("form", { class: "canary", onsubmit: send },
        h("label", { for: "canary-version" }, "Version"), version,
        h("label", { for: "canary-percent" }, "Canary share of traffic"),
        h("div", { class: "row" }, percent, shown),
        submit);
    }

    // New code for the endpoint: a version that takes no traffic until rolled out.
    function versionForm() {
      const source = h("input", { id: "version-source", type: "text", required: true, value: endpoint.source || "", "aria-describedby": "version-source-help" });
      const submit = h("button", { type: "submit" }, "Create version");
      const send = (event) => {
        event.preventDefault();
        change(submit, "Creating the version…",
          () => api("POST", `/endpoints/${slug}/versions`, { source: source.value.trim() }),
          (v) => `Version v${v.version} created: its replicas are starting; roll it out above.`);
      };
      return h("form", { onsubmit: send },
        h("label", { for: "version-source" }, "Source (absolute folder path or git URL)"), source,
        h("p", { id: "version-source-help", class: "help" },
          "File, function and settings stay the endpoint's. The version's replicas start; it takes no traffic until rolled out."),
        submit);
    }

    panel.append(h("h2", {}, "Config"), status, body);
    try {
      render(await api("GET", `/endpoints/${slug}/traffic`));
    } catch (error) {
      showFailure(body, error);
    }
  }

  // ---- Forms: labelled fields, and the API's errors next to the field they name ---------
  const enc = encodeURIComponent;
  let uid = 0;

  // A labelled control with its help text and a slot for its error; `fields[name]` finds it
  // again when the API names `name` in an error.
  function field(fields, name, label, control, help) {
    const id = control.id || `f${++uid}`;
    control.id = id;
    const described = [];
    const helpNode = help ? h("p", { id: `${id}-help`, class: "help" }, help) : null;
    if (helpNode) described.push(helpNode.id);
    const slot = h("p", { id: `${id}-error`, class: "error field-error", role: "alert", hidden: true });
    if (described.length) control.setAttribute("aria-describedby", described.join(" "));
    if (fields) fields[name] = { control, slot, described };
    const isCheck = control.type === "checkbox" || control.type === "radio";
    const labelNode = h("label", { for: id }, label);
    return h("div", { class: isCheck ? "field check" : "field" },
      isCheck ? [control, labelNode] : [labelNode, control], helpNode, slot);
  }

  const input = (attrs = {}) => h("input", { type: "text", autocomplete: "off", ...attrs });
  const select = (attrs, options, chosen) =>
    h("select", attrs, options.map(([value, text]) => h("option", { value, selected: value === chosen }, text)));

  // A form's submit handler: its errors cleared and its submit button disabled while `send`
  // runs; a refusal (the API's, or one `send` throws) shown beside the fields it names, after
  // `failed` (if given) tidied up what `send` had shown.
  function submitForm(fields, general, send, failed = null) {
    return async (event) => {
      event.preventDefault();
      clearErrors(fields, general);
      const buttons = event.currentTarget.querySelectorAll('button[type="submit"]');
      for (const button of buttons) button.disabled = true;
      try {
        await send();
      } catch (error) {
        if (failed) failed(error);
        showErrors(fields, general, error);
      } finally {
        for (const button of buttons) button.disabled = false;
      }
    };
  }

  function clearErrors(fields, general) {
    for (const { control, slot, described } of Object.values(fields)) {
      slot.hidden = true;
      slot.textContent = "";
      control.removeAttribute("aria-invalid");
      if (described.length) control.setAttribute("aria-describedby", described.join(" "));
      else control.removeAttribute("aria-describedby");
    }
    general.textContent = "";
  }

  // "a.b: problem; c: other" → each problem under the field it names (the closest known
  // prefix), the rest in the form's general message; focus goes to the first field named.
  function showErrors(fields, general, error) {
    clearErrors(fields, general);
    // The API may name a section (details.field "kafka") while its message names the fields
    // within it ("kafka.output_topic: ..."): then the message's more precise names win.
    const whole = error.field && !error.message.startsWith(`${error.field}.`);
    const parts = whole ? [error.message] : error.message.split("; ");
    const unplaced = [];
    let first = null;
    for (const part of parts) {
      const match = /^([A-Za-z_][\w.\[\]-]*): ([\s\S]*)$/.exec(part);
      let name = whole ? error.field : match ? match[1] : error.field || "";
      while (name && !fields[name]) name = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : "";
      if (!name) {
        unplaced.push(part);
        continue;
      }
      const { control, slot, described } = fields[name];
      slot.textContent = slot.textContent ? `${slot.textContent}; ${part}` : part;
      slot.hidden = false;
      control.setAttribute("aria-invalid", "true");
      control.setAttribute("aria-describedby", [...described, slot.id].join(" "));
      first ||= control;
    }
    general.textContent = unplaced.length ? `Refused: ${unplaced.join("; ")}` : `Refused (HTTP ${error.status}): see the fields marked.`;
    (first || general).focus();
  }

  // "KEY=VALUE" lines as an object; numbers and true/false typed when `typed`.
  function pairs(text, name, typed) {
    const out = {};
    text.split("\n").map((l) => l.trim()).filter(Boolean).forEach((line, i) => {
      const at = line.indexOf("=");
      if (at <= 0) throw new ApiError(400, `${name}: line ${i + 1} (${line}) is not KEY=VALUE`, name);
      const key = line.slice(0, at).trim();
      let value = line.slice(at + 1).trim();
      if (typed) {
        if (value === "true" || value === "false") value = value === "true";
        else if (value !== "" && !Number.isNaN(Number(value))) value = Number(value);
      }
      out[key] = value;
    });
    return out;
  }
  const linesOf = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k}=${v}`).join("\n");
  const numberOr = (control) => (control.value.trim() === "" ? undefined : Number(control.value));
  const when = (t) => (t ? new Date(t).toLocaleString() : "—");
  const short = (id) => String(id).slice(0, 8);

  // ---- New endpoint, and Rerun ----------------------------------------------------------
  async function endpointFormPage(fromSlug) {
    const view = screen();
    const title = fromSlug ? "Rerun an endpoint" : "New endpoint";
    document.title = `${title} · Cormorant console`;
    const heading = h("h1", {}, title);
    let from = null;
    if (fromSlug) {
      view(heading, h("p", {}, "Loading…"));
      try {
        from = await api("GET", `/endpoints/${enc(fromSlug)}`);
      } catch (error) {
        view(heading, failure(error));
        return;
      }
    }
    const f = {};
    const v = from || { kind: "web", file: "predict.py", function: "predict", env: {}, server: {}, replicas: {}, resources: {} };
    const c = {
      name: input({ required: true, value: from ? `${from.name} rerun` : "" }),
      kind: select({}, [["web", "web (HTTP requests)"], ["batch", "batch (CSV jobs)"], ["stream", "stream (Kafka topics)"]], v.kind),
      source: input({ required: true, value: v.source || "", placeholder: "/srv/models/iris or https://…/repo.git" }),
      commit: input({ value: v.commit || "" }),
      file: input({ value: v.file }),
      function: input({ value: v.function }),
      preprocess_file: input({ value: v.preprocess_file || "" }),
      preprocess_function: input({ value: v.preprocess_function || "" }),
      accepts_file: h("input", { type: "checkbox", checked: !!v.accepts_file }),
      env: h("textarea", { rows: "3" }, linesOf(v.env)),
      server: h("textarea", { rows: "3" }, linesOf(v.server)),
      "replicas.min": input({ type: "number", min: "0", value: from ? from.replicas.min : "" }),
      "replicas.max": input({ type: "number", min: "1", value: from ? from.replicas.max : "" }),
      "replicas.target": input({ type: "number", min: "0", step: "any", value: from ? from.replicas.target : "" }),
      timeout_s: input({ type: "number", min: "0", step: "any", value: from ? from.timeout_s : "" }),
      "resources.memory_mb": input({ type: "number", min: "64", value: from ? from.resources.memory_mb : "" }),
      "resources.max_processes": input({ type: "number", min: "16", value: from ? from.resources.max_processes : "" }),
      "resources.open_files": input({ type: "number", min: "64", value: from ? from.resources.open_files : "" }),
    };
    const k = (from && from.kafka) || {};
    const kc = {
      "kafka.bootstrap_servers": input({ value: k.bootstrap_servers || "" }),
      "kafka.input_topics": input({ value: (k.input_topics || []).join(", ") }),
      "kafka.output_topic": input({ value: k.output_topic || "" }),
      "kafka.dlq_topic": input({ value: k.dlq_topic || "" }),
      // Secrets come back masked: a rerun asks for them again rather than sending the mask.
      "kafka.security": h("textarea", { rows: "2" }, from ? "" : linesOf(k.security)),
    };
    const general = h("p", { class: "error", role: "alert", tabindex: "-1" });
    const kafka = h("fieldset", { hidden: v.kind !== "stream" },
      h("legend", {}, "Kafka (stream endpoints)"),
      field(f, "kafka.bootstrap_servers", "Bootstrap servers", kc["kafka.bootstrap_servers"], "host:port[,host:port]; empty: the platform's broker."),
      field(f, "kafka.input_topics", "Input topics", kc["kafka.input_topics"], "Separated by commas."),
      field(f, "kafka.output_topic", "Output topic", kc["kafka.output_topic"]),
      field(f, "kafka.dlq_topic", "Dead-letter topic", kc["kafka.dlq_topic"], "Empty: <output topic>.dlq."),
      field(f, "kafka.security", "Security options", kc["kafka.security"], from
        ? "KEY=VALUE lines (SASL/SSL). Blank: the original's are kept (secrets are never shown back)."
        : "KEY=VALUE lines (SASL/SSL); secrets are never shown back."));
    f.kafka = { control: kc["kafka.input_topics"], slot: f["kafka.input_topics"].slot, described: f["kafka.input_topics"].described };
    c.kind.addEventListener("change", () => { kafka.hidden = c.kind.value !== "stream"; });
    const touched = new Set(from ? ["name"] : []);
    for (const [name, control] of Object.entries({ ...c, ...kc })) {
      const mark = () => touched.add(name.split(".")[0]);
      control.addEventListener("input", mark);
      control.addEventListener("change", mark);
    }
    const submit = h("button", { type: "submit" }, fromSlug ? "Run" : "Create endpoint");
    const result = h("div", { id: "created" });

    function body() {
      const b = {
        name: c.name.value.trim(), kind: c.kind.value, source: c.source.value.trim(),
        commit: c.commit.value.trim() || null, file: c.file.value.trim() || "predict.py",
        function: c.function.value.trim() || "predict",
        preprocess_file: c.preprocess_file.value.trim() || null,
        preprocess_function: c.preprocess_function.value.trim() || null,
        accepts_file: c.accepts_file.checked,
        env: pairs(c.env.value, "env", false), server: pairs(c.server.value, "server", true),
      };
      const replicas = { min: numberOr(c["replicas.min"]), max: numberOr(c["replicas.max"]), target: numberOr(c["replicas.target"]) };
      if (Object.values(replicas).some((x) => x !== undefined)) b.replicas = replicas;
      const timeout = numberOr(c.timeout_s);
      if (timeout !== undefined) b.timeout_s = timeout;
      const resources = { memory_mb: numberOr(c["resources.memory_mb"]), max_processes: numberOr(c["resources.max_processes"]), open_files: numberOr(c["resources.open_files"]) };
      if (Object.values(resources).some((x) => x !== undefined)) b.resources = resources;
      if (b.kind === "stream") {
        b.kafka = {
          input_topics: kc["kafka.input_topics"].value.split(",").map((t) => t.trim()).filter(Boolean),
          output_topic: kc["kafka.output_topic"].value.trim(),
        };
        // Left blank, a rerun keeps the original's security options (secrets come back masked,
        // so the form cannot show them); a new endpoint has none.
        if (kc["kafka.security"].value.trim()) b.kafka.security = pairs(kc["kafka.security"].value, "kafka.security", false);
        if (kc["kafka.bootstrap_servers"].value.trim()) b.kafka.bootstrap_servers = kc["kafka.bootstrap_servers"].value.trim();
        if (kc["kafka.dlq_topic"].value.trim()) b.kafka.dlq_topic = kc["kafka.dlq_topic"].value.trim();
      }
      if (!from) return b;
      // A rerun sends only what was changed here: the rest (its code too) is the original's.
      return Object.fromEntries(Object.entries(b).filter(([key]) => touched.has(key)));
    }

    const send = submitForm(f, general, async () => {
      const payload = body();
      result.replaceChildren(h("p", { role: "status" }, fromSlug ? "Starting the rerun…" : "Creating the endpoint: its replicas start…"));
      const created = fromSlug
        ? await api("POST", `/endpoints/${enc(fromSlug)}/rerun`, payload)
        : await api("POST", "/endpoints", payload);
      // Kept in this page's memory only, for its Try it box.
      tokens[created.slug] = created.token;
      const tokenCode = h("code", { id: "new-token" }, created.token);
      result.replaceChildren(h("section", { class: "try", "aria-labelledby": "created-heading" },
        h("h2", { id: "created-heading", tabindex: "-1" }, `Endpoint ${created.slug} created`),
        h("p", {}, "Its token, shown this once (the platform keeps only its hash):"),
        h("p", {}, tokenCode),
        h("p", {}, h("a", { href: `#/endpoints/${enc(created.slug)}` }, `Open ${created.name}`),
          " (this page keeps the token for its Try it box until you reload).")));
      result.querySelector("h2").focus();
    }, () => result.replaceChildren());

    view(
      h("p", {}, h("a", { href: from ? `#/endpoints/${enc(from.slug)}` : "#/" }, from ? `← ${from.name}` : "← Endpoints")),
      heading,
      from ? h("p", { class: "help" }, `Prefilled from ${from.slug}: check the details, change what you want, run. Only the fields you change are sent; the rest, its code included, is the original's.`) : null,
      h("form", { class: "wide", onsubmit: send, novalidate: true },
        general,
        h("fieldset", {}, h("legend", {}, "Model"),
          field(f, "name", "Name", c.name, "Shown name; the slug comes from it."),
          field(f, "kind", "Kind", c.kind),
          field(f, "source", "Source", c.source, "An absolute folder on the deployer's machine, or a git URL."),
          field(f, "commit", "Commit, tag or branch (git sources)", c.commit),
          field(f, "file", "File", c.file),
          field(f, "function", "Function", c.function),
          field(f, "preprocess_file", "Preprocess file", c.preprocess_file, "Optional: runs before predict."),
          field(f, "preprocess_function", "Preprocess function", c.preprocess_function),
          field(f, "accepts_file", "Accepts a file upload", c.accepts_file)),
        h("fieldset", {}, h("legend", {}, "Settings"),
          field(f, "env", "Environment variables", c.env, "KEY=VALUE lines, exported to the predict code."),
          field(f, "server", "Server settings", c.server, "KEY=VALUE lines for gunicorn, e.g. workers=1."),
          field(f, "replicas.min", "Replicas min", c["replicas.min"], "Empty: the default (web: 1, batch: 0)."),
          field(f, "replicas.max", "Replicas max", c["replicas.max"]),
          field(f, "replicas.target", "In-flight requests per replica (autoscaling target)", c["replicas.target"]),
          field(f, "timeout_s", "Request timeout (s)", c.timeout_s)),
        h("fieldset", {}, h("legend", {}, "Resources of each replica"),
          field(f, "resources.memory_mb", "Memory (MB)", c["resources.memory_mb"]),
          field(f, "resources.max_processes", "Processes and threads", c["resources.max_processes"]),
          field(f, "resources.open_files", "Open files", c["resources.open_files"])),
        kafka,
        submit),
      result);
    if (f.replicas === undefined) f.replicas = f["replicas.min"];
    if (f.resources === undefined) f.resources = f["resources.memory_mb"];
  }

  // Redraw `node` with `draw()` only when `data` changed: a poll must not move keyboard focus.
  function redraw(node, data, draw) {
    const text = JSON.stringify(data);
    if (node.dataset.drawn === text) return;
    node.dataset.drawn = text;
    node.replaceChildren(...[draw()].flat());
  }
  // Shows why a call failed in `node`, forgetting what `redraw` drew there last, so the next
  // good answer is drawn even when it equals the one before the failure.
  function showFailure(node, error) {
    delete node.dataset.drawn;
    node.replaceChildren(failure(error));
  }
  // Redraws `node` (as `redraw`) with `draw(items)`, `items` being the `key` of what GET `path`
  // answers; if the call fails, `node` shows why.
  async function redrawFrom(node, path, key, draw) {
    let items;
    try {
      items = (await api("GET", path))[key];
    } catch (error) {
      showFailure(node, error);
      return;
    }
    redraw(node, items, () => draw(items));
  }
  // Fills `node` with what `draw` makes (it may call the API), or with why that failed.
  async function fill(node, draw) {
    try {
      node.replaceChildren(...[await draw()].flat());
    } catch (error) {
      showFailure(node, error);
    }
  }
  const table = (caption, columns, rows) =>
    h("div", { class: "scroll" }, h("table", {},
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, columns.map((col) => h("th", { scope: "col" }, col)))),
      h("tbody", {}, rows)));
  const fileUrl = (reference) => {
    // "<dataset>@<version>/<path>" → its download route.
    const [dataset, rest] = reference.split("@");
    const at = rest.indexOf("/");
    return `/api/v1/datasets/${enc(dataset)}/versions/${rest.slice(0, at)}/files/${rest.slice(at + 1).split("/").map(enc).join("/")}`;
  };

  // ---- Predictions (batch jobs) ---------------------------------------------------------
  const ACTIVE = new Set(["queued", "running"]);
  const percentDone = (j) =>
    j.status === "succeeded" ? 100 : j.rows_total ? Math.floor((100 * j.rows_done) / j.rows_total) : 0;

  async function predictionsTab(endpoint, panel) {
    const slug = enc(endpoint.slug);
    const list = h("div", { id: "batch-jobs" });
    const detail = h("section", { id: "batch-detail", "aria-live": "polite" });
    const comparison = h("section", { id: "batch-compare", "aria-live": "polite" });
    let jobs = [];
    let opened = null;

    async function load() {
      try {
        jobs = (await api("GET", `/endpoints/${slug}/batch-jobs`)).jobs;
      } catch (error) {
        showFailure(list, error);
        return;
      }
      redraw(list, jobs, () => jobs.length
        ? table("Batch jobs of this endpoint, newest first",
            ["Job", "Status", "Progress", "Rows", "Failures", "Input", "Created"],
            jobs.map((j) => h("tr", {},
              h("th", { scope: "row" }, h("button", { type: "button", class: "link", onclick: () => { opened = j.id; openJob(); } }, `Job ${short(j.id)}`)),
              h("td", {}, h("span", { class: `status ${j.status}` }, j.status)),
              h("td", {}, h("progress", { max: "100", value: percentDone(j), "aria-label": `Job ${short(j.id)} progress` }), ` ${percentDone(j)} %`),
              h("td", {}, `${j.rows_done}${j.rows_total != null ? ` of ${j.rows_total}` : ""}`),
              h("td", {}, j.failures),
              h("td", {}, h("code", {}, j.input_file)),
              h("td", {}, when(j.created_at)))))
        : h("p", {}, "No batch jobs yet: start one below."));
      if (opened) openJob();
    }

    function openJob() {
      const j = jobs.find((x) => x.id === opened);
      if (!j) return;
      redraw(detail, j, () => [
        h("h3", {}, `Job ${short(j.id)}`),
        h("dl", { class: "summary" }, [
          ["Id", j.id], ["Status", j.status], ["Progress", `${percentDone(j)} %`],
          ["Rows", `${j.rows_done} done of ${j.rows_total ?? "?"}, ${j.failures} failed`],
          ["Input", j.input_file], ["Output", j.output_reference || `${j.dataset}/${j.output_file} (when done)`],
          ["Replicas", j.replicas ?? "—"], ["Duration", j.duration_s != null ? `${fmt(j.duration_s)} s` : "—"],
          ["Rows per second", j.rows_per_s != null ? fmt(j.rows_per_s) : "—"],
          ["Logs predictions", j.log_predictions ? "yes" : "no"], ["Error", j.error || "—"],
          ["Created", when(j.created_at)], ["Finished", when(j.finished_at)],
        ].map(([key, value]) => [h("dt", {}, key), h("dd", {}, value)])),
        h("div", { class: "row" },
          j.output_reference ? h("a", { class: "button", href: fileUrl(j.output_reference), download: j.output_file.split("/").pop() }, "Download the output CSV") : null,
          ACTIVE.has(j.status)
            ? h("button", { type: "button", onclick: () => api("DELETE", `/endpoints/${slug}/batch-jobs/${enc(j.id)}`).then(load, (e) => detail.append(failure(e))) }, "Cancel job")
            : null),
      ]);
    }

    const metricKeys = input({ id: "compare-metrics", placeholder: "accuracy, row_x" });
    async function compareAll() {
      if (!jobs.length) {
        comparison.replaceChildren(h("p", {}, "No jobs to compare yet."));
        return;
      }
      const ids = jobs.map((j) => j.id).join(",");
      const keys = metricKeys.value.split(",").map((x) => x.trim()).filter(Boolean).join(",");
      try {
        const c = await api("GET", `/endpoints/${slug}/batch-jobs/compare?ids=${enc(ids)}&metrics=${enc(keys)}`);
        const cell = (x) => (x == null ? "—" : typeof x === "number" ? fmt(x) : x);
        const rows = [
          ...Object.entries(c.metrics).map(([name, byJob]) => h("tr", {}, h("th", { scope: "row" }, name), c.jobs.map((j) => h("td", {}, cell(byJob[j.id]))))),
          ...Object.entries(c.custom || {}).map(([name, byJob]) => h("tr", {}, h("th", { scope: "row" }, `${name} (avg)`), c.jobs.map((j) => h("td", {}, cell(byJob[j.id] && byJob[j.id].avg))))),
        ];
        comparison.replaceChildren(h("h3", {}, `Comparing ${c.jobs.length} job${c.jobs.length === 1 ? "" : "s"}`),
          table("The jobs' figures side by side", ["Figure", ...c.jobs.map((j) => `Job ${short(j.id)}`)], rows));
      } catch (error) {
        showFailure(comparison, error);
      }
    }

    const f = {};
    const general = h("p", { class: "error", role: "alert", tabindex: "-1" });
    const c = {
      input_file: input({ required: true, placeholder: "iris/flowers.csv" }),
      output_file: input({ required: true, value: "predictions.csv" }),
      dataset: input({ required: true }),
      log_predictions: h("input", { type: "checkbox" }),
    };
    const submit = h("button", { type: "submit" }, "Start job");
    const start = submitForm(f, general, async () => {
      const job = await api("POST", `/endpoints/${slug}/batch-jobs`, {
        input_file: c.input_file.value.trim(), output_file: c.output_file.value.trim(),
        dataset: c.dataset.value.trim(), log_predictions: c.log_predictions.checked,
      });
      opened = job.id;
      await load();
    });
    c.input_file.addEventListener("change", () => {
      // The output goes into the input's dataset unless another is given.
      if (!c.dataset.value) c.dataset.value = c.input_file.value.split(/[@/]/)[0];
    });

    panel.append(
      h("h2", {}, "Predictions"),
      h("p", { class: "help" }, "Batch jobs predict every row of a CSV in a dataset (upload one on the Datasets page) into a new version of a dataset. Progress refreshes every second."),
      list,
      h("div", { class: "row" }, field(null, "compare-metrics", "Custom metrics to compare (optional)", metricKeys),
        h("button", { type: "button", onclick: compareAll }, "Compare all")),
      comparison,
      detail,
      h("h3", {}, "Start a batch job"),
      h("form", { onsubmit: start, novalidate: true },
        general,
        field(f, "input_file", "Input CSV", c.input_file, "A dataset file: <dataset>/<path> or <dataset>@<version>/<path>."),
        field(f, "output_file", "Output file", c.output_file, "Path of the predictions CSV in the output dataset."),
        field(f, "dataset", "Output dataset", c.dataset, "The dataset whose new version receives the output."),
        field(f, "log_predictions", "Also log every row's prediction", c.log_predictions),
        submit));
    await load();
    poll(load, 1000, panel);
  }

  // ---- Continual Learning (triggers) ----------------------------------------------------
  const describeAction = (a) =>
    a.email ? `email ${[].concat(a.email).join(", ")}` : a.webhook ? `webhook ${a.webhook}` : a.flow ? `flow ${a.flow}` : JSON.stringify(a);

  async function triggersTab(endpoint, panel) {
    const slug = enc(endpoint.slug);
    const list = h("div", { id: "triggers" });
    const firings = h("section", { id: "firings", "aria-live": "polite" });
    const status = h("p", { id: "trigger-status", role: "status", class: "help" });

    async function load() {
      await redrawFrom(list, `/endpoints/${slug}/triggers`, "triggers", (triggers) => triggers.length
        ? table("Triggers of this endpoint", ["Alert", "Severity", "If", "Action", "Enabled", "Last fired", ""],
            triggers.map((t) => h("tr", {},
              h("th", { scope: "row" }, t.title, t.warnings.length ? h("span", { class: "slug" }, t.warnings.join(" ")) : null),
              h("td", {}, t.severity),
              h("td", {}, `${t.tag} ${t.comparison === "gt" ? ">" : "<"} ${t.value}, ${t.min_events}× · every ${t.every}`),
              h("td", {}, describeAction(t.action)),
              h("td", {}, t.enabled ? "yes" : "no"),
              h("td", {}, when(t.last_fired_at)),
              h("td", {}, h("div", { class: "row" },
                h("button", { type: "button", onclick: () => showFirings(t) }, h("span", {}, "Firings"), h("span", { class: "sr-only" }, ` of ${t.title}`)),
                h("button", { type: "button", class: "quiet", onclick: () => api("PATCH", `/triggers/${t.id}`, { enabled: !t.enabled }).then(load, (e) => { status.textContent = `Refused: ${e.message}`; }) },
                  t.enabled ? "Disable" : "Enable", h("span", { class: "sr-only" }, ` ${t.title}`)),
                h("button", { type: "button", class: "quiet", onclick: () => api("DELETE", `/triggers/${t.id}`).then(() => { status.textContent = `Deleted ${t.title}.`; return load(); }, (e) => { status.textContent = `Refused: ${e.message}`; }) },
                  "Delete", h("span", { class: "sr-only" }, ` ${t.title}`)))))))
        : h("p", {}, "No triggers yet: New alert creates one."));
    }

    async function showFirings(t) {
      await fill(firings, async () => {
        const items = (await api("GET", `/triggers/${t.id}/firings`)).firings;
        return [h("h3", {}, `Firings of ${t.title}`), items.length
          ? table(`Firings of ${t.title}`, ["Fired", "Status", "Action", "Values", "Attempts", "Error"],
              items.map((x) => h("tr", {}, h("td", {}, when(x.fired_at)), h("td", {}, x.status), h("td", {}, x.action),
                h("td", {}, x.values.map(fmt).join(", ")), h("td", {}, x.attempts), h("td", {}, x.error || "—"))))
          : h("p", {}, "It has not fired yet.")];
      });
    }

    // The New Alert dialog: Info, If Condition, Action, as in the spec.
    const f = {};
    const general = h("p", { class: "error", role: "alert", tabindex: "-1" });
    const c = {
      title: input({ required: true }),
      severity: select({}, [["info", "Info"], ["warning", "Warning"], ["critical", "Critical"]], "warning"),
      tag: input({ required: true, placeholder: "accuracy" }),
      comparison: select({}, [["lt", "is less than"], ["gt", "is greater than"]], "lt"),
      value: input({ type: "number", step: "any", required: true }),
      every: input({ required: true, value: "5m" }),
      min_events: input({ type: "number", min: "1", value: "1" }),
      cooldown: input({ placeholder: "default: every × events" }),
      kind: select({}, [["email", "Send an email"], ["webhook", "Call a webhook"], ["flow", "Run a flow"]], "email"),
      target: input({ required: true }),
    };
    const targetLabel = { email: "Email addresses (separated by commas)", webhook: "Webhook URL", flow: "Flow name" };
    const targetField = field(f, "action", targetLabel.email, c.target);
    c.kind.addEventListener("change", () => { targetField.querySelector("label").textContent = targetLabel[c.kind.value]; });
    const submit = h("button", { type: "submit" }, "Create alert");
    // `dialog` is drawn below: this runs only once it is open.
    const create = submitForm(f, general, async () => {
      const target = c.target.value.trim();
      const action = c.kind.value === "email" ? { email: target.split(",").map((x) => x.trim()).filter(Boolean) } : { [c.kind.value]: target };
      const body = {
        title: c.title.value.trim(), severity: c.severity.value, tag: c.tag.value.trim(),
        comparison: c.comparison.value, value: c.value.value === "" ? null : Number(c.value.value),
        every: c.every.value.trim(), min_events: Number(c.min_events.value || 1), action,
      };
      if (c.cooldown.value.trim()) body.cooldown = c.cooldown.value.trim();
      const t = await api("POST", `/endpoints/${slug}/triggers`, body);
      dialog.close();
      status.textContent = `Alert ${t.title} created.` + (t.secret ? ` Its webhook signing key, shown once: ${t.secret}` : "") +
        (t.warnings.length ? ` Note: ${t.warnings.join(" ")}` : "");
      await load();
    });
    const dialog = h("dialog", { id: "new-alert", "aria-labelledby": "new-alert-heading" },
      h("form", { onsubmit: create, novalidate: true },
        h("h3", { id: "new-alert-heading" }, "New alert"),
        general,
        h("fieldset", {}, h("legend", {}, "Info"),
          field(f, "title", "Title", c.title), field(f, "severity", "Severity", c.severity)),
        h("fieldset", {}, h("legend", {}, "If Condition"),
          field(f, "tag", "Metric", c.tag, "The key given to log_metric, exactly."),
          field(f, "comparison", "Comparison", c.comparison),
          field(f, "value", "Value", c.value),
          field(f, "every", "Check every", c.every, "Seconds, or 30s, 5m, 1h."),
          field(f, "min_events", "Values meeting the condition before it fires", c.min_events),
          field(f, "cooldown", "Cooldown after a firing", c.cooldown)),
        h("fieldset", {}, h("legend", {}, "Action"),
          field(f, "action.kind", "Then", c.kind), targetField),
        h("div", { class: "row" }, submit,
          h("button", { type: "button", class: "quiet", onclick: () => dialog.close() }, "Cancel"))));

    panel.append(
      h("h2", {}, "Continual Learning"),
      h("p", { class: "help" }, "Triggers check a metric the model logs and email, call a webhook or run a flow when it crosses a value."),
      h("div", { class: "row" }, h("button", { type: "button", onclick: () => { clearErrors(f, general); dialog.showModal(); } }, "New alert")),
      status, list, firings, dialog);
    await load();
    poll(load, 5000, panel);
  }

  // ---- Feedback loop --------------------------------------------------------------------
  const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
  const describeSchedule = (s) =>
    s.now ? "once, now" : s.every ? `every ${s.every}` : s.on ? `on ${[].concat(s.on.days).join(",")} ${s.on.time} ${s.on.timezone}` : JSON.stringify(s);

  async function feedbackTab(endpoint, panel) {
    const slug = enc(endpoint.slug);
    const list = h("div", { id: "feedback-loops" });
    const runs = h("section", { id: "feedback-runs", "aria-live": "polite" });
    const status = h("p", { id: "feedback-status", role: "status", class: "help" });

    async function load() {
      await redrawFrom(list, `/endpoints/${slug}/feedback-loops`, "feedback_loops", (loops) => loops.length
        ? table("Feedback loops of this endpoint", ["Into dataset", "When", "Format", "State", "Last run", "Next run", ""],
            loops.map((l) => h("tr", {},
              h("th", { scope: "row" }, l.dataset),
              h("td", {}, describeSchedule(l.schedule)),
              h("td", {}, l.format),
              h("td", {}, h("span", { class: `status ${l.state}` }, l.state)),
              h("td", {}, l.last_run ? `${l.last_run.status}: ${l.last_run.rows} rows${l.last_run.dataset_version ? ` → v${l.last_run.dataset_version}` : ""}` : "—"),
              h("td", {}, when(l.next_run)),
              h("td", {}, h("div", { class: "row" },
                h("button", { type: "button", onclick: () => showRuns(l) }, "Runs", h("span", { class: "sr-only" }, ` into ${l.dataset}`)),
                l.state !== "stopped"
                  ? [
                      h("button", { type: "button", class: "quiet", onclick: () => act(api("POST", `/endpoints/${slug}/feedback-loops/${l.id}/run`), "Ran it now.") }, "Run now", h("span", { class: "sr-only" }, ` into ${l.dataset}`)),
                      h("button", { type: "button", class: "quiet", onclick: () => act(api("DELETE", `/endpoints/${slug}/feedback-loops/${l.id}`), `Stopped the loop into ${l.dataset}.`) }, "Stop", h("span", { class: "sr-only" }, ` the loop into ${l.dataset}`)),
                    ]
                  : null)))))
        : h("p", {}, "No feedback loops yet: configure one below."));
    }
    async function act(call, done) {
      try {
        await call;
        status.textContent = done;
      } catch (error) {
        status.textContent = `Refused: ${error.message}`;
      }
      await load();
    }
    async function showRuns(l) {
      await fill(runs, async () => {
        const d = await api("GET", `/endpoints/${slug}/feedback-loops/${l.id}`);
        return [h("h3", {}, `Runs into ${l.dataset}`), d.runs.length
          ? table(`Runs into ${l.dataset}`, ["Started", "Trigger", "Status", "Rows", "Dataset version", "Error"],
              d.runs.map((r) => h("tr", {}, h("td", {}, when(r.started_at)), h("td", {}, r.trigger), h("td", {}, r.status),
                h("td", {}, r.rows), h("td", {}, r.dataset_version ? `v${r.dataset_version}` : "—"), h("td", {}, r.error || "—"))))
          : h("p", {}, "No runs yet.")];
      });
    }

    const f = {};
    const general = h("p", { class: "error", role: "alert", tabindex: "-1" });
    const datasets = h("datalist", { id: "dataset-names" });
    api("GET", "/datasets").then((d) => datasets.replaceChildren(...d.datasets.map((x) => h("option", { value: x.name }))), () => {});
    const dataset = input({ required: true, list: "dataset-names" });
    const mode = (value, text, checked) => h("input", { type: "radio", name: "schedule", value, checked });
    const modes = { now: mode("now", "", true), every: mode("every"), on: mode("on") };
    const every = input({ value: "6h" });
    const days = DAYS.map((d) => h("input", { type: "checkbox", value: d, checked: d === "mon" }));
    const at = input({ type: "time", value: "02:30" });
    const zone = input({ value: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" });
    const format = select({}, [["csv", "CSV"], ["parquet", "Parquet"]], "csv");
    const daysBox = h("fieldset", { class: "days" }, h("legend", {}, "Days"), days.map((box, i) => field(null, "", DAYS[i], box)));
    f["schedule.on.days"] = { control: days[0], slot: h("p", { id: "days-error", class: "error field-error", role: "alert", hidden: true }), described: [] };
    daysBox.append(f["schedule.on.days"].slot);
    const submit = h("button", { type: "submit" }, "Configure");
    const create = submitForm(f, general, async () => {
      const chosen = Object.keys(modes).find((k) => modes[k].checked);
      const schedule = chosen === "now" ? { now: true } : chosen === "every" ? { every: every.value.trim() }
        : { on: { days: days.filter((d) => d.checked).map((d) => d.value), time: at.value, timezone: zone.value.trim() } };
      const l = await api("POST", `/endpoints/${slug}/feedback-loops`, { dataset: dataset.value.trim(), schedule, format: format.value });
      status.textContent = `Feedback loop into ${l.dataset} configured (${describeSchedule(l.schedule)}).`;
      await load();
    });

    panel.append(
      h("h2", {}, "Feedback loop"),
      h("p", { class: "help" }, "Copy this endpoint's logged predictions into a dataset, to retrain on what the model saw: each run adds a version with what arrived since the run before."),
      status, list, runs,
      h("h3", {}, "Configure a feedback loop"),
      h("form", { onsubmit: create, novalidate: true },
        general,
        field(f, "dataset", "Into dataset", dataset, "An existing dataset (create one on the Datasets page)."), datasets,
        h("fieldset", {}, h("legend", {}, "Run"),
          field(f, "schedule", "Now, once", modes.now),
          field(null, "", "Every", modes.every),
          field(f, "schedule.every", "Interval", every, "15m, 6h, 1d…"),
          field(null, "", "On days at a time", modes.on),
          daysBox,
          field(f, "schedule.on.time", "Time", at),
          field(f, "schedule.on.timezone", "Time zone", zone)),
        field(f, "format", "Format", format),
        submit));
    await load();
    poll(load, 5000, panel);
  }

  // ---- Monitoring -----------------------------------------------------------------------
  async function monitoringTab(endpoint, panel) {
    const slug = enc(endpoint.slug);
    const replicas = h("div", { id: "replicas" });
    const events = h("div", { id: "replica-events" });
    // The previous reading of each replica's processes, by pid: CPU use is the CPU time each
    // process spent between two reads, summed. Per pid, because a worker that restarted in
    // between takes its CPU time with it (a replica-wide difference would go negative).
    let previous = {};
    const mb = (bytes) => (bytes == null ? "—" : `${fmt(bytes / 1048576)} MB`);
    async function load() {
      try {
        const [u, e] = await Promise.all([api("GET", `/endpoints/${slug}/replicas/usage`), api("GET", `/endpoints/${slug}`)]);
        const now = Date.parse(u.read_at);
        const cpu = (r) => {
          const before = previous[r.id];
          if (!r.processes.length) return "—";
          if (!before || now <= before.at) return "measuring…";
          let spent = 0;
          for (const p of r.processes) {
            const then = before.cpu[p.pid];
            // A process new since the last read is counted from the next one on.
            if (then != null && p.cpu_seconds != null && p.cpu_seconds >= then) spent += p.cpu_seconds - then;
          }
          return `${fmt((100 * spent) / ((now - before.at) / 1000))} %`;
        };
        replicas.replaceChildren(u.replicas.length
          ? table("Ready replicas and what each uses", ["Replica", "Version", "CPU (% of a core)", "Memory", "Open files", "Network"],
              u.replicas.map((r) => h("tr", {},
                h("th", { scope: "row" }, h("code", {}, short(r.id))), h("td", {}, `v${r.version}`),
                h("td", { "data-label": "CPU" }, r.error ? h("span", { class: "error" }, r.error) : cpu(r)),
                h("td", { "data-label": "Memory" }, mb(r.memory_bytes)),
                h("td", {}, r.open_fds ?? "—"),
                h("td", {}, "Grafana (on Kubernetes)"))))
          : h("p", {}, "No ready replicas (a batch endpoint scales to zero between jobs)."));
        previous = Object.fromEntries(u.replicas.map((r) => [r.id, { cpu: Object.fromEntries(r.processes.map((p) => [p.pid, p.cpu_seconds])), at: now }]));
        redraw(events, e.events, () => e.events.length
          ? table("Replica events, newest first", ["Time", "Replica", "Version", "State", "Why"],
              [...e.events].reverse().map((x) => h("tr", {}, h("td", {}, when(x.time)), h("td", {}, h("code", {}, short(x.replica_id))), h("td", {}, `v${x.version}`), h("td", {}, x.state), h("td", {}, [x.cause, x.reason].filter(Boolean).join(": ") || "—"))))
          : h("p", {}, "No replica events yet."));
      } catch (error) {
        showFailure(replicas, error);
      }
    }
    const grafana = document.querySelector('meta[name="grafana-url"]').content.replace(/\/$/, "");
    const dashboards = [["cormorant-endpoints", "Endpoint traffic, errors and latency"], ["cormorant-replicas", "Replica CPU, memory, network and readiness"]];
    if (endpoint.kind === "stream") dashboards.push(["cormorant-streams", "Stream throughput and consumer lag"]);
    panel.append(
      h("h2", {}, "Monitoring"),
      h("h3", {}, "Grafana dashboards"),
      grafana
        ? h("ul", {}, dashboards.map(([uid, label]) => h("li", {}, h("a", { href: `${grafana}/d/${uid}?var-endpoint=${slug}`, rel: "noopener", target: "_blank" }, label))))
        : h("p", { class: "help" }, "Import deploy/grafana/endpoints.json, replicas.json and streams.json into Grafana, then set CORMORANT_GATEWAY_GRAFANA_URL to link them here."),
      h("h3", {}, "Replicas"),
      h("p", { class: "help" }, "Read from each replica's own /metrics every 5 s. Network use is measured on Kubernetes only (cAdvisor): see the Grafana replicas dashboard."),
      replicas,
      h("h3", {}, "Replica events"), events);
    await load();
    poll(load, 5000, panel);
  }

  // ---- Flows ----------------------------------------------------------------------------
  async function flowsPage(name) {
    const view = screen();
    document.title = `Flows · Cormorant console`;
    const heading = h("h1", {}, name ? `Flow ${name}` : "Flows");
    if (!name) {
      view(heading, h("p", {}, "Loading…"));
      try {
        const flows = (await api("GET", "/flows")).flows;
        view(heading, flows.length
          ? table("Flows", ["Flow", "Tasks", "Folder", "Updated"], flows.map((x) => h("tr", {},
              h("th", { scope: "row" }, h("a", { href: `#/flows/${enc(x.name)}` }, x.name)),
              h("td", {}, x.tasks.map((t) => t.name).join(" → ")), h("td", {}, h("code", {}, x.directory)), h("td", {}, when(x.updated_at)))))
          : h("p", {}, "No flows yet: save one with cormorant flows save <file.yaml>."));
      } catch (error) {
        view(heading, failure(error));
      }
      return;
    }
    const runs = h("div", { id: "flow-runs" });
    const status = h("p", { role: "status", class: "help" });
    async function load() {
      try {
        const items = (await api("GET", `/flows/${enc(name)}/runs`)).runs;
        redraw(runs, items, () => items.length
          ? items.map((r) => h("details", { class: "run", open: r === items[0] },
              h("summary", {}, `Run ${short(r.id)} · `, h("span", { class: `status ${r.status}` }, r.status), ` · ${when(r.created_at)}`),
              r.error ? h("p", { class: "error" }, r.error) : null,
              table(`Tasks of run ${short(r.id)}`, ["Task", "Type", "Status", "Duration", "Log"], r.tasks.map((t) => h("tr", {},
                h("th", { scope: "row" }, t.name), h("td", {}, t.type), h("td", {}, h("span", { class: `status ${t.status}` }, t.status)),
                h("td", {}, t.duration_s != null ? `${fmt(t.duration_s)} s` : "—"),
                h("td", {}, t.output ? h("pre", { class: "output" }, t.output) : "—"))))))
          : h("p", {}, "No runs yet."));
      } catch (error) {
        showFailure(runs, error);
      }
    }
    const start = h("button", { type: "button", onclick: async () => {
      try {
        const r = await api("POST", `/flows/${enc(name)}/runs`);
        status.textContent = `Run ${short(r.id)} started.`;
      } catch (error) {
        status.textContent = `Refused: ${error.message}`;
      }
      await load();
    } }, "Start a run");
    view(h("p", {}, h("a", { href: "#/flows" }, "← Flows")), heading, h("div", { class: "row" }, start), status, h("h2", {}, "Runs"), runs);
    await load();
    poll(load, 2000, runs);
  }

  // ---- Datasets -------------------------------------------------------------------------
  async function datasetsPage(name) {
    const view = screen();
    document.title = `Datasets · Cormorant console`;
    const heading = h("h1", {}, name ? `Dataset ${name}` : "Datasets");
    const status = h("p", { role: "status", class: "help", id: "dataset-status" });
    if (!name) {
      const f = {};
      const general = h("p", { class: "error", role: "alert", tabindex: "-1" });
      const newName = input({ required: true });
      const body = h("div");
      const create = submitForm(f, general, async () => {
        const d = await api("POST", "/datasets", { name: newName.value.trim() });
        location.hash = `#/datasets/${enc(d.name)}`;
      });
      view(heading, body, h("h2", {}, "New dataset"),
        h("form", { onsubmit: create, novalidate: true }, general, field(f, "name", "Dataset name", newName), h("button", { type: "submit" }, "Create dataset")));
      try {
        const items = (await api("GET", "/datasets")).datasets;
        body.replaceChildren(items.length
          ? table("Datasets", ["Dataset", "Latest version", "Created"], items.map((d) => h("tr", {},
              h("th", { scope: "row" }, h("a", { href: `#/datasets/${enc(d.name)}` }, d.name)),
              h("td", {}, d.latest_version ? `v${d.latest_version}` : "empty"), h("td", {}, when(d.created_at)))))
          : h("p", {}, "No datasets yet."));
      } catch (error) {
        showFailure(body, error);
      }
      return;
    }
    const versions = h("div", { id: "dataset-versions" });
    async function load() {
      try {
        const items = (await api("GET", `/datasets/${enc(name)}/versions`)).versions;
        versions.replaceChildren(items.length
          ? table(`Versions of ${name}, oldest first`, ["Version", "Created", "Files"], items.map((v) => h("tr", {},
              h("th", { scope: "row" }, `v${v.version}`), h("td", {}, when(v.created_at)),
              h("td", {}, h("ul", { class: "files" }, v.files.map((file) => h("li", {},
                h("a", { href: fileUrl(`${name}@${v.version}/${file.path}`), download: file.path.split("/").pop() }, file.path),
                ` (${file.size.toLocaleString()} B)`)))))))
          : h("p", {}, "No versions yet: upload a file."));
      } catch (error) {
        showFailure(versions, error);
      }
    }
    const f = {};
    const general = h("p", { class: "error", role: "alert", tabindex: "-1" });
    const file = h("input", { type: "file", required: true });
    const path = input({ placeholder: "default: the file's name" });
    const upload = submitForm(f, general, async () => {
      if (!file.files.length) throw new ApiError(400, "file: choose a file to upload", "file");
      const form = new FormData();
      if (path.value.trim()) form.append("path", path.value.trim());
      form.append("file", file.files[0]);
      status.textContent = "Uploading…";
      const v = await api("POST", `/datasets/${enc(name)}/files`, form);
      status.textContent = `Uploaded: version v${v.version}.`;
      await load();
    }, () => { status.textContent = ""; });
    view(h("p", {}, h("a", { href: "#/datasets" }, "← Datasets")), heading, status, h("h2", {}, "Versions"), versions,
      h("h2", {}, "Upload a file"),
      h("form", { onsubmit: upload, novalidate: true }, general,
        field(f, "file", "File", file, "Each upload makes a new version holding the previous files and this one."),
        field(f, "path", "Path in the dataset", path),
        h("button", { type: "submit" }, "Upload")));
    await load();
  }

  // ---- Routing --------------------------------------------------------------------------
  async function route() {
    navigation += 1;
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    for (const link of document.querySelectorAll('nav[aria-label="Main"] a')) {
      const here = link.dataset.page === (["new", "rerun", "flows", "datasets"].includes(parts[0]) ? parts[0] : "");
      if (here) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (parts[0] === "endpoints" && parts[1]) await endpointPage(parts[1], parts[2]);
    else if (parts[0] === "new") await endpointFormPage(null);
    else if (parts[0] === "rerun" && parts[1]) await endpointFormPage(parts[1]);
    else if (parts[0] === "flows") await flowsPage(parts[1]);
    else if (parts[0] === "datasets") await datasetsPage(parts[1]);
    else await listPage();
  }
  window.addEventListener("hashchange", () => {
    // The page is drawn anew: keep keyboard focus on the tabs if it was there, else on main.
    const before = document.activeElement;
    const onTab = before && before.getAttribute("role") === "tab";
    route().then(() => {
      const now = document.activeElement;
      // Focus the user moved elsewhere meanwhile stays where they put it.
      if (now !== before && now && now !== document.body) return;
      const selected = document.querySelector('[role="tab"][aria-selected="true"]');
      if (onTab && selected) selected.focus();
      else if (!now || now === document.body) main.focus();
    });
  });
  route();
})();
