#!/usr/bin/env python3
"""A real FHIR client library against a real `pennine node`: SMART on FHIR's own
Python client (`fhirclient`) finds the token endpoint in the CapabilityStatement's
rest.security, asks for its default scopes with a PyJWT-signed assertion (the
server grants the subset the client may hold), then creates, reads, searches
(with paging), updates and deletes through its resource models.

Usage: fhirclient_check.py <path to the pennine binary>   (run by .ci/run in a venv)
"""
import json
import subprocess
import sys
import tempfile
import time
import uuid

import jwt  # PyJWT
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from fhirclient import client
from fhirclient.models.humanname import HumanName
from fhirclient.models.identifier import Identifier
from fhirclient.models.patient import Patient


def main(binary):
    work = tempfile.mkdtemp()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="fc1", alg="RS384", use="sig")
    with open(f"{work}/jwks.json", "w") as f:
        json.dump({"keys": [jwk]}, f)
    with open(f"{work}/clients.toml", "w") as f:
        f.write('[[client]]\nid = "fc-vendor"\nroles = ["vendor", "analyst"]\nregion = "nenc"\n'
                'jwks_file = "jwks.json"\n')
    node = subprocess.Popen(
        [binary, "node", "--region", "nenc", "--listen", "127.0.0.1:0", "--data", f"{work}/data",
         "--clients", f"{work}/clients.toml"],
        stdout=subprocess.PIPE, stderr=open(f"{work}/node.log", "w"), text=True)
    try:
        fhir = node.stdout.readline().split()[-1]
        token_url = fhir.rsplit("/fhir", 1)[0] + "/auth/token"
        claims = {"iss": "fc-vendor", "sub": "fc-vendor", "aud": token_url,
                  "exp": int(time.time()) + 240, "jti": str(uuid.uuid4())}
        assertion = jwt.encode(claims, key, algorithm="RS384", headers={"kid": "fc1"})

        # fhirclient adds launch/patient to the scope asked: the server grants the subset it may.
        smart = client.FHIRClient(settings={"app_id": "fc-vendor", "api_base": fhir + "/",
                                            "jwt_token": assertion, "scope": "system/*.cruds"})
        smart.prepare()  # reads /metadata; the token endpoint comes from rest.security
        auth = smart.server.auth
        assert auth is not None and auth.__class__.__name__ == "FHIROAuth2Auth", auth
        assert auth._token_uri == token_url, auth._token_uri
        try:
            granted = smart.server.authorize()
        except Exception as e:
            raise AssertionError("token request refused: %s" % getattr(getattr(e, "response", None), "text", e))
        assert smart.ready and auth.access_token, granted
        assert smart.desired_scope.startswith("launch/patient"), smart.desired_scope
        scopes = granted.get("scope", "").split()
        assert scopes and all(s.startswith("system/*.") for s in scopes), granted
        assert set("".join(s.split(".", 1)[1] for s in scopes)) == set("cruds"), granted

        server = smart.server
        family = "Fhirclient" + uuid.uuid4().hex[:8]
        made = []
        for i in range(7):
            p = Patient({"resourceType": "Patient"})
            p.name = [HumanName({"family": family, "given": [f"G{i}"]})]
            p.identifier = [Identifier({"system": "urn:fhirclient-check", "value": f"{family}-{i}"})]
            created = p.create(server)
            new_id = (created or {}).get("id") if isinstance(created, dict) else None
            assert new_id, created
            made.append(new_id)
        read = Patient.read(made[0], server)
        assert read.name[0].family == family, read.as_json()

        # Paging: 7 matches, 3 a page, followed through the Bundle's next links.
        search = Patient.where(struct={"family": family, "_count": "3"})
        found = [r.id for r in search.perform_resources_iter(server)]
        assert sorted(found) == sorted(made), (found, made)

        read.gender = "female"
        read.update(server)
        again = Patient.read(made[0], server)
        assert again.gender == "female" and again.meta.versionId == "2", again.as_json()

        again.delete(server)
        try:
            Patient.read(made[0], server)
            raise AssertionError("a deleted patient was read")
        except Exception as e:  # fhirclient raises FHIRNotFoundException (or an HTTP error) for 404/410
            assert "404" in str(e) or "410" in str(e) or "NotFound" in type(e).__name__, repr(e)
        print("fhirclient %s: token endpoint from rest.security, default scopes granted as a subset, "
              "create/read/search with paging/update/delete: OK" % client.__version__)
    finally:
        node.kill()
        node.wait()


if __name__ == "__main__":
    main(sys.argv[1])
