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
  const COMING = {
    predictions:
      "Batch jobs (list, live progress, Compare all) are coming to this tab. Meanwhile: " +
      "cormorant batch run / list, or POST /api/v1/endpoints/{slug}/batch-jobs.",
    "continual-learning":
      "Triggers (the New Alert dialog and its firings) are coming to this tab. Meanwhile: " +
      "cormorant triggers, or /api/v1/endpoints/{slug}/triggers.",
    feedback:
      "Feedback loops (configure now / every / on, stop) are coming to this tab. Meanwhile: " +
      "cormorant feedback, or /api/v1/endpoints/{slug}/feedback-loops.",
    monitoring:
      "Replica CPU, memory and network, and links to the Grafana dashboards, are coming to " +
      "this tab. Meanwhile: the dashboards under deploy/grafana/.",
  };
  let timers = [];
  // The endpoint page on screen ({slug, tabs, panel}): a tab change redraws only its panel.
  let shown = null;
  const tokens = {};
  const customMetrics = {};

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One call to the public API; JSON in and out, the API's own message on errors.
  async function api(method, path, body, headers = {}) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
    if (method !== "GET") init.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
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
      const message = data && data.error && data.error.message ? data.error.message : `HTTP ${res.status}`;
      throw new ApiError(res.status, message);
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
    for (const id of timers) clearInterval(id);
    timers = [];
  }

  function show(...nodes) {
    stopTimers();
    shown = null;
    main.replaceChildren(...nodes);
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
    document.title = "Endpoints · Cormorant console";
    const heading = h("h1", {}, "Endpoints");
    show(heading, h("p", {}, "Loading…"));
    let endpoints;
    try {
      endpoints = (await api("GET", "/endpoints")).endpoints;
    } catch (error) {
      show(heading, failure(error));
      return;
    }
    if (endpoints.length === 0) {
      show(heading, h("p", {}, "No endpoints yet: deploy one with cormorant deploy <folder>."));
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
    show(
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
    const chosen = TABS.some(([id]) => id === tab) ? tab : "charts";
    if (!shown || shown.slug !== slug) {
      let endpoint;
      try {
        endpoint = await api("GET", `/endpoints/${encodeURIComponent(slug)}`);
      } catch (error) {
        show(h("p", {}, h("a", { href: "#/" }, "← Endpoints")), h("h1", {}, slug), failure(error));
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
      show(
        h("p", {}, h("a", { href: "#/" }, "← Endpoints")),
        h("h1", {}, endpoint.name, " ", h("span", { class: `status ${endpoint.status}` }, endpoint.status)),
        summary(endpoint),
        endpoint.kind === "web" ? tryIt(endpoint) : null,
        h("div", { role: "tablist", "aria-label": "Endpoint views", class: "tabs", onkeydown: tabKeys }, tabs),
        panel,
      );
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
    const fill = { charts: chartsTab, logs: logsTab, config: configTab }[chosen];
    if (fill) await fill(endpoint, content);
    else content.append(h("h2", {}, TABS.find(([id]) => id === chosen)[1]), h("p", { class: "coming" }, COMING[chosen].replace("{slug}", slug)));
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
        h("p", { id: "try-help", class: "help" }, "The token was shown once when the endpoint was created; the console does not keep it."),
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
        charts.replaceChildren(failure(error));
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
    if (panel.isConnected) timers.push(setInterval(draw, 10000));
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
    const max = Math.max(1, ...points.map((p) => p.value));
    const total = points.reduce((sum, p) => sum + p.value, 0);
    const step = points.length > 1 ? W / (points.length - 1) : 0;
    const line = points.map((p, i) => `${(i * step).toFixed(1)},${(H - 2 - (p.value / max) * (H - 4)).toFixed(1)}`).join(" ");
    return s("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": `${total} request${total === 1 ? "" : "s"} in the last hour, at most ${max} a minute` },
      s("polyline", { points: line, class: "line s0" }));
  }

  const fmt = (v) => (v >= 100 ? Math.round(v) : Math.round(v * 100) / 100).toString();
  const clock = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

  // ---- Logs -----------------------------------------------------------------------------
  async function logsTab(endpoint, panel) {
    const slug = encodeURIComponent(endpoint.slug);
    const body = h("div", { class: "scroll" });
    async function load() {
      try {
        const page = await api("GET", `/endpoints/${slug}/logs?limit=50`);
        if (page.items.length === 0) {
          body.replaceChildren(h("p", {}, "No predictions logged yet."));
          return;
        }
        body.replaceChildren(h("table", { class: "logs" },
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
        body.replaceChildren(failure(error));
      }
    }
    panel.append(
      h("h2", {}, "Logs"),
      h("div", { class: "row" },
        h("button", { type: "button", onclick: load }, "Refresh"),
        h("a", { class: "button", href: `/api/v1/endpoints/${slug}/logs.csv`, download: `${endpoint.slug}-logs.csv` }, "Export CSV")),
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
        h("p", { class: "coming" }, "Progressive rollouts with checks and replica events are coming to this tab; meanwhile: cormorant rollout --policy."));
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
      body.replaceChildren(failure(error));
    }
  }

  // ---- Routing --------------------------------------------------------------------------
  async function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] === "endpoints" && parts[1]) await endpointPage(parts[1], parts[2]);
    else await listPage();
  }
  window.addEventListener("hashchange", () => {
    // The page is drawn anew: keep keyboard focus on the tabs if it was there, else on main.
    const onTab = document.activeElement && document.activeElement.getAttribute("role") === "tab";
    route().then(() => {
      const selected = document.querySelector('[role="tab"][aria-selected="true"]');
      if (onTab && selected) selected.focus();
      else if (!document.activeElement || document.activeElement === document.body) main.focus();
    });
  });
  route();
})();
