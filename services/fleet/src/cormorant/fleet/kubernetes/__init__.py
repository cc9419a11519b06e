"""The ``KubernetesFleet``: endpoint versions as Deployments, scaled by HPA or KEDA.

``manifests`` turns a placement into objects (pure), ``render`` prints them for
``cormorant k8s manifests``, ``fetch`` is the replica pods' init container, ``client`` the
API calls (server-side apply, delete, the pod watch), ``watch`` maps pods to replica states and
``fleet`` puts them together behind the ``Fleet`` seam.
"""
