"""The replica fleet service: runs the placements the deployer gives it.

``LocalFleet`` (``local.py``) runs worker and kafka-bridge processes on this machine and takes
its own scaling decisions; ``KubernetesFleet`` (``kubernetes/``) turns a placement into a
Deployment and hands scaling to HPA/KEDA. The routes (``api.py``) are the ``Fleet`` seam the
deployer calls; the values they carry are ``cormorant.common.endpoints.fleet``'s.
"""
