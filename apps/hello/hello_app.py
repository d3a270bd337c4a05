"""A plain FastAPI-ingress Serve app: the smallest useful image raybuild builds."""

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from ray import serve

api = FastAPI()


@serve.deployment
@serve.ingress(api)
class Hello:
    @api.get("/")
    def root(self, name: str = "world") -> Response:
        return Response(orjson.dumps({"greeting": f"hello, {name}"}), media_type="application/json")

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}


app = Hello.bind()
