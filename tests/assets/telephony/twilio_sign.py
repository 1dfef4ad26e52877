"""Sign and validate Twilio requests with Twilio's own helper library (RequestValidator), for
tests/tests/telephony.rs: a signature check verified with a client nobody here wrote.

stdin: {"token": str, "cases": [{"url": str, "params": {name: value}, "tampered": {name: value},
         "ours": str}]}
stdout: [{"signature": str,          # RequestValidator.compute_signature(url, params)
          "tampered_valid": bool,    # validate(url, tampered, signature): must be false
          "ours_valid": bool}]       # validate(url, params, ours): the daemon's side's signature
"""
import json
import sys

from twilio.request_validator import RequestValidator

request = json.load(sys.stdin)
validator = RequestValidator(request["token"])
out = []
for case in request["cases"]:
    signature = validator.compute_signature(case["url"], case["params"])
    out.append({
        "signature": signature,
        "tampered_valid": validator.validate(case["url"], case["tampered"], signature),
        "ours_valid": validator.validate(case["url"], case["params"], case["ours"]),
    })
json.dump(out, sys.stdout)
