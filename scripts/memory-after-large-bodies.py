#!/usr/bin/env python3
"""RSS of a real node while 8 clients each send a 60 MB transaction Bundle that is
refused (broken JSON at its end, or valid JSON the node refuses), and after.

Usage: scripts/memory-after-large-bodies.py <pennine binary> [badjson|invalid]
"""
import subprocess, sys, tempfile, time, urllib.request, json, hashlib, threading
binary = sys.argv[1]
work = tempfile.mkdtemp()
secret = "s" * 32
open(f"{work}/clients.toml", "w").write('[[client]]\nid = "v"\nroles = ["vendor"]\nregion = "nenc"\nsecret_sha256 = "%s"\n' % hashlib.sha256(secret.encode()).hexdigest())
node = subprocess.Popen([binary, "node", "--region", "nenc", "--listen", "127.0.0.1:0", "--data", f"{work}/data", "--clients", f"{work}/clients.toml"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
fhir = node.stdout.readline().split()[-1]
root = fhir.rsplit("/fhir", 1)[0]
import base64
req = urllib.request.Request(root + "/auth/token", data=b"grant_type=client_credentials", headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic " + base64.b64encode(f"v:{secret}".encode()).decode()})
tok = json.load(urllib.request.urlopen(req))["access_token"]
def rss():
    for l in open(f"/proc/{node.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
print("start RSS MB", rss())
kind = sys.argv[2] if len(sys.argv) > 2 else "badjson"
# 60 MB bundle of many small entries, invalid at the very end (or valid JSON that fails validation)
entry = '{"resource":{"resourceType":"Patient","name":[{"family":"X"}]},"request":{"method":"POST","url":"Patient"}},'
n = 60_000_000 // len(entry)
if kind == "badjson":
    body = ('{"resourceType":"Bundle","type":"transaction","entry":[' + entry * n)[:-1] + ']'  # missing final }
else:
    body = ('{"resourceType":"Bundle","type":"transaction","entry":[' + entry * n)[:-1] + '],"bogus":1}'
body = body.encode()
def send():
    r = urllib.request.Request(fhir, data=body, headers={"Content-Type": "application/fhir+json", "Authorization": "Bearer " + tok})
    try:
        urllib.request.urlopen(r, timeout=600)
    except urllib.error.HTTPError as e:
        return e.code
ts = [threading.Thread(target=send) for _ in range(8)]
peak = 0
for t in ts: t.start()
while any(t.is_alive() for t in ts):
    peak = max(peak, rss()); time.sleep(0.2)
print("peak RSS MB", peak)
for s in [0, 2, 5, 15]:
    time.sleep(s)
    print("after +%ds RSS MB" % s, rss())
node.kill()
