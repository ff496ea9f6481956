"""The application builder that Ray Serve config files and KubeRay's RayService name.

A Serve config (`serve deploy config.yaml`, or RayService's `serveConfigV2`) names the
application by import path and hands it `args`: here the fields of a `labeler serve` config
(labeler/serve/config.py: models, limits, uri, api_tokens, ingress_num_cpus), except where
to listen, which is the Serve config's `http_options`:

    http_options: {host: 0.0.0.0, port: 8000}
    applications:
      - name: labeler
        route_prefix: /
        import_path: labeler.serve.builder:build_app
        args:
          models:
            - {name: detector, task: detect, model: {family: owlv2, source: s3://m/owlv2},
               labels: [person, car], resources: {num_gpus: 0.5}}

Serve calls build_app(args), which validates them as `labeler serve` validates its config
(a SpecError naming each bad field) and returns the same application `labeler serve` runs.
The API tokens come from `api_tokens` and LABELER_API_TOKENS as for `labeler serve`; one is
required, because here the HTTP proxy listens where http_options say (0.0.0.0 on KubeRay),
not on loopback as `labeler serve` falls back to without a token.
"""

from __future__ import annotations

from pydantic import ValidationError

from labeler.config import SpecError, format_validation_error
from labeler.serve.auth import ENV_VAR, configured_tokens
from labeler.serve.config import ServeSpec

# Fields of a serve config that belong to the Serve config's http_options instead.
LISTEN_FIELDS = ("host", "port")


def serve_spec_from_args(args: dict) -> ServeSpec:
    """The application's args as a validated ServeSpec; SpecError naming each bad field."""
    if not isinstance(args, dict):
        raise SpecError(f"invalid serve application args: a mapping is required, "
                        f"got {type(args).__name__}")
    for name in LISTEN_FIELDS:
        if name in args:
            raise SpecError(f"invalid serve application args:\n  {name}: where Serve listens "
                            f"is set by the Serve config's http_options (RayService: "
                            f"serveConfigV2.http_options), not by the application")
    try:
        return ServeSpec.model_validate(args)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, ServeSpec).replace(
            "invalid job spec", "invalid serve application args")) from None


def build_app(args: dict):
    """Serve application builder: args (a serve config's fields) -> the bound application
    (an ingress and one deployment per model, labeler.serve.app.build_app). Loads no model;
    the deployments do, once Serve starts them."""
    from labeler.serve.app import build_app as bind_application

    spec = serve_spec_from_args(args)
    tokens = configured_tokens(spec.api_tokens)
    if not tokens:
        raise SpecError(f"invalid serve application args:\n  api_tokens: no API token "
                        f"configured (set {ENV_VAR} from a secret, or api_tokens): under Ray "
                        f"Serve the API listens where http_options say, so it would be open")
    return bind_application(spec, tokens)
