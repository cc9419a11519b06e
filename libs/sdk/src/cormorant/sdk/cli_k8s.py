"""``cormorant k8s``: what the platform runs on Kubernetes, to review or keep in Git."""

from __future__ import annotations

from typing import Annotated

import typer

from cormorant.sdk.cli_output import api_call, err
from cormorant.sdk.client import Client

k8s_app = typer.Typer(help="Kubernetes: the objects the kubernetes fleet applies.",
                      no_args_is_help=True)  # fmt: skip


@k8s_app.command("manifests")
def manifests(
    slug: Annotated[
        str | None, typer.Argument(help="Endpoint whose objects to print (default: all).")
    ] = None,
) -> None:
    """Print the YAML the kubernetes fleet applies for an endpoint (every endpoint without
    SLUG): its Deployments, Services, PodDisruptionBudgets, HPAs and KEDA ScaledObjects."""
    with Client() as client:
        found = api_call(client.endpoints.manifests, slug)
    if not found["objects"]:
        err.print("No endpoints yet: nothing to print.")
        return
    # Verbatim (no rich markup or wrapping): the output is piped to kubectl or a file.
    typer.echo(found["yaml"], nl=False)
