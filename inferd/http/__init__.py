"""The HTTP layer, top to bottom (calls only go down this list):

server.py       the listening socket; accepts into the waiting room; drain; reload of the limits
connections.py  the waiting room (idle and slow sockets on one selector; a head parsed ONCE) and
                the handler thread pools, one cap per pool
exchange.py     one request on a handler thread: route, admit, body, run the route, send, record
router.py       method + path -> a route of the table; which pool a path belongs to
body.py         reading a body off the socket within the limits (100 Continue, body deadline)
heads.py, chunked.py, multipart.py   sans-IO parsers of heads, chunked bodies, multipart forms
responses.py    responses as bytes; the one place an exception becomes an answer
messages.py     Route, Request, Response: what the routes and this layer share
errors.py, grammar.py, settings.py   typed errors, RFC 9110 field rules, the frozen limits
"""
