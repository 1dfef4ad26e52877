#!/usr/bin/env python3
"""A Twilio Media Streams echo server as a team would write it without gatewayd: the baseline of
docs/benchmarks.md, "Twilio Media Streams" (run by `TWILIO_BENCH_TARGET=python
loadtool/scripts/twilio.sh`).

What it does is what Twilio's Media Streams tutorials do, on aiohttp (one process, one asyncio
event loop), with Twilio's own helper library for the signatures:

- POST /api/telephony/twilio/voice: the incoming-call webhook. X-Twilio-Signature is checked
  with `twilio.request_validator.RequestValidator` over the public URL and the form (403 when
  wrong); the answer is TwiML built with `twilio.twiml.voice_response`:
  `<Connect><Stream url="wss://.../api/telephony/twilio/media-stream">` with the caller's
  CallSid as a `<Parameter>`.
- POST /api/telephony/twilio/status: the status callback, signature checked, 204.
- GET /api/telephony/twilio/media-stream: the bidirectional Media Stream (WebSocket). The
  upgrade's signature (over the URL alone, as Twilio signs it) is checked before accepting.
  Every message is parsed as JSON; `start` gives the streamSid; each `media` message is echoed
  back as a `media` message of that stream; `stop` ends the stream.

Pacing (`--pace`): `arrival` (default, what the tutorials do) sends each echo as its frame
arrives, so the echo is paced by the caller's own 20 ms stream; `clock` queues the frames and
sends one per 20 ms from a per-call timer on an absolute clock (as a media server paces its
output); a backlog of more than two frames is cut to two, oldest first.
"""

import argparse
import asyncio
import json
import os
import sys
import time

from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

VOICE_PATH = "/api/telephony/twilio/voice"
STATUS_PATH = "/api/telephony/twilio/status"
STREAM_PATH = "/api/telephony/twilio/media-stream"
FRAME_SECONDS = 0.020


def ws_form(url):
    """http(s)://... -> ws(s)://..."""
    if url.startswith("https://"):
        return "wss://" + url[len("https://"):]
    if url.startswith("http://"):
        return "ws://" + url[len("http://"):]
    return url


class Server:
    def __init__(self, auth_token, public_base_url, pace):
        self.validator = RequestValidator(auth_token)
        self.public = public_base_url.rstrip("/")
        self.pace = pace
        self.streams = 0
        self.frames_in = 0
        self.frames_out = 0
        self.refused = 0

    async def signed_form(self, request):
        """The request's form when its X-Twilio-Signature is Twilio's for the public URL, else None."""
        form = await request.post()
        url = self.public + request.path_qs
        if not self.validator.validate(url, dict(form), request.headers.get("X-Twilio-Signature", "")):
            self.refused += 1
            return None
        return form

    async def voice(self, request):
        form = await self.signed_form(request)
        if form is None:
            return web.Response(status=403, text="invalid signature")
        response = VoiceResponse()
        connect = Connect()
        stream = Stream(url=ws_form(self.public) + STREAM_PATH)
        stream.parameter(name="call_sid", value=form.get("CallSid", ""))
        connect.append(stream)
        response.append(connect)
        return web.Response(text=str(response), content_type="text/xml")

    async def status(self, request):
        if await self.signed_form(request) is None:
            return web.Response(status=403, text="invalid signature")
        return web.Response(status=204)

    async def media_stream(self, request):
        url = ws_form(self.public) + request.path_qs
        if not self.validator.validate(url, {}, request.headers.get("X-Twilio-Signature", "")):
            self.refused += 1
            return web.Response(status=403, text="invalid signature")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.streams += 1
        stream_sid = None
        queue = asyncio.Queue() if self.pace == "clock" else None
        pacer = None
        try:
            async for msg in ws:
                if msg.type != web.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                event = data.get("event")
                if event == "start":
                    stream_sid = data["start"]["streamSid"]
                    if queue is not None:
                        pacer = asyncio.create_task(self.paced(ws, queue))
                elif event == "media":
                    self.frames_in += 1
                    if stream_sid is None:
                        continue
                    echo = {"event": "media", "streamSid": stream_sid, "media": {"payload": data["media"]["payload"]}}
                    if queue is None:
                        await ws.send_str(json.dumps(echo))
                        self.frames_out += 1
                    else:
                        queue.put_nowait(json.dumps(echo))
                elif event == "stop":
                    break
        finally:
            if pacer is not None:
                pacer.cancel()
        await ws.close()
        return ws

    async def paced(self, ws, queue):
        """Send one queued frame per 20 ms slot, on an absolute clock (a late slot does not
        move the next); a backlog of more than two frames is cut to two, oldest first."""
        loop = asyncio.get_running_loop()
        due = loop.time() + FRAME_SECONDS
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += FRAME_SECONDS
            while queue.qsize() > 2:
                queue.get_nowait()
            if not queue.empty():
                await ws.send_str(queue.get_nowait())
                self.frames_out += 1

    async def report(self, _app):
        # Printed when the server stops (SIGTERM / SIGINT): what it saw.
        print(
            f"twilio_echo: streams {self.streams}, media in {self.frames_in}, media out {self.frames_out}, "
            f"refused signatures {self.refused}",
            file=sys.stderr,
            flush=True,
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--public-base-url", help="the URL Twilio calls this server at (default http://HOST:PORT)")
    p.add_argument("--auth-token", default="gatewayd-development-twilio-token",
                   help="the Twilio auth token signatures are checked with (env TWILIO_AUTH_TOKEN wins)")
    p.add_argument("--pace", choices=["arrival", "clock"], default="arrival")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's own loop")
    a = p.parse_args()
    token = os.environ.get("TWILIO_AUTH_TOKEN", a.auth_token)
    public = a.public_base_url or f"http://{a.host}:{a.port}"
    if a.uvloop:
        import uvloop

        uvloop.install()
    server = Server(token, public, a.pace)
    app = web.Application()
    app.router.add_post(VOICE_PATH, server.voice)
    app.router.add_post(STATUS_PATH, server.status)
    app.router.add_get(STREAM_PATH, server.media_stream)
    app.on_shutdown.append(server.report)
    print(f"twilio_echo: listening on {a.host}:{a.port} (public {public}, pace {a.pace}"
          f"{', uvloop' if a.uvloop else ''}) at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
    web.run_app(app, host=a.host, port=a.port, print=None, backlog=1024)


if __name__ == "__main__":
    main()
