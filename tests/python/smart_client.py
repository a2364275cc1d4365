#!/usr/bin/env python3
"""SMART Backend Services against a real `pennine node`, driven by third-party
libraries (PyJWT to sign the RS384 client assertion, `cryptography` for the key):
discovery, token, use of the token, and refusal of a replayed assertion.

Usage: smart_client.py <path to the pennine binary>   (run by .ci/run in a venv)
"""
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import jwt  # PyJWT
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


def request(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def main(binary):
    work = tempfile.mkdtemp()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="py1", alg="RS384", use="sig")
    with open(f"{work}/jwks.json", "w") as f:
        json.dump({"keys": [jwk]}, f)
    with open(f"{work}/clients.toml", "w") as f:
        f.write('[[client]]\nid = "py-analyst"\nroles = ["analyst"]\nregion = "nenc"\njwks_file = "jwks.json"\n')
    node = subprocess.Popen(
        [binary, "node", "--region", "nenc", "--listen", "127.0.0.1:0", "--data", f"{work}/data",
         "--clients", f"{work}/clients.toml"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        fhir = node.stdout.readline().split()[-1]
        root = fhir.rsplit("/fhir", 1)[0]
        status, config = request(root + "/.well-known/smart-configuration")
        assert status == 200, config
        assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"], config
        assert "RS384" in config["token_endpoint_auth_signing_alg_values_supported"], config
        token_url = config["token_endpoint"]

        def assertion():
            claims = {"iss": "py-analyst", "sub": "py-analyst", "aud": token_url,
                      "exp": int(time.time()) + 240, "jti": str(uuid.uuid4())}
            return jwt.encode(claims, key, algorithm="RS384", headers={"kid": "py1"})

        def token(signed, scope=None):
            form = {"grant_type": "client_credentials",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": signed}
            if scope:
                form["scope"] = scope
            return request(token_url, urllib.parse.urlencode(form).encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"})

        signed = assertion()
        status, body = token(signed, "system/Patient.rs")
        assert status == 200, body
        assert body["token_type"] == "bearer" and body["scope"] == "system/Patient.rs", body
        status, bundle = request(fhir + "/Patient?_count=1", headers={"Authorization": "Bearer " + body["access_token"]})
        assert status == 200 and bundle["resourceType"] == "Bundle", bundle
        status, outcome = request(fhir + "/Observation", headers={"Authorization": "Bearer " + body["access_token"]})
        assert status == 403, outcome
        status, body = token(signed)
        assert status == 401 and body["error"] == "invalid_client", body
        status, body = request(fhir + "/Patient")
        assert status == 401, body
        print("third-party SMART Backend Services client (PyJWT %s, RS384): discovery, token, scoped use, replay refused: OK"
              % jwt.__version__)
    finally:
        node.kill()
        node.wait()


if __name__ == "__main__":
    main(sys.argv[1])
