"""The online API: Ray Serve deployments of the batch path's adapters behind a FastAPI ingress.

    config.py    ServeSpec (YAML): served models = job TaskSpecs + batching, replicas, limits
    server.py    start / serve_forever: tokens, bind address, Ray, Serve
    app.py       the FastAPI ingress and its endpoints; build_app
    builder.py   build_app(args) for Serve config files and KubeRay's RayService
    model.py     the model deployment: @serve.batch over the adapter, grouped by parameters
    variants.py  per-request labels / threshold sharing one loaded model
    inputs.py    request bodies (JSON, multipart) -> validated requests, image bytes
    fetch.py     uri inputs, with the SSRF rules
    auth.py      API tokens and bind address
    limits.py    413 / 504 / 503 + Retry-After
    formats.py   Label Studio and CVAT answers
"""
