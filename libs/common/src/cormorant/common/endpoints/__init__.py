"""An endpoint as the deployer and the fleet both see it, declared once.

The spec and its API shapes (``schemas``), the stored records and the replica rows
(``store``), the public views and events (``views``), the code archives (``snapshot``) and a
stream endpoint's ``kafka`` section (``kafka``).
"""
