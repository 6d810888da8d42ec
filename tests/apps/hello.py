"""Hello world: 12-byte body with an explicit Content-Length."""

BODY = b"Hello World!"


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [BODY]
