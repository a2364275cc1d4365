#!/usr/bin/env python3
"""Writes seed inputs for the cargo-fuzz targets into OUT/<target>/, from ../shared/corpora.

Usage: scripts/fuzz-seeds.py OUT
The corpora stay where they are; seeds are written to a scratch folder, never into the repo.
"""
import json, os, re, sys, glob, html

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "corpora")
out = sys.argv[1]


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


if not os.path.isdir(root):
    sys.exit(f"no corpora at {root}")

# FHIRPath: the official test suite's expressions, alone and over their input resources.
xml = open(os.path.join(root, "fhirpath-r4", "tests-fhir-r4.xml"), encoding="utf-8").read()
inputs = {}
for path in glob.glob(os.path.join(root, "fhirpath-r4", "input-json", "*.json")):
    inputs[os.path.basename(path).replace(".json", ".xml")] = open(path, encoding="utf-8").read()
n = 0
for group in re.finditer(r'<test [^>]*inputfile="([^"]+)"[^>]*>(.*?)</test>', xml, re.S):
    m = re.search(r"<expression[^>]*>(.*?)</expression>", group.group(2), re.S)
    if not m:
        continue
    expr = html.unescape(m.group(1)).strip()
    put("fhirpath_parse", f"t{n}", expr)
    if group.group(1) in inputs and n % 4 == 0:
        put("fhirpath_eval", f"t{n}", expr + "\n" + inputs[group.group(1)])
    n += 1

# ViewDefinitions from the SQL-on-FHIR v2 suite.
n = 0
for path in sorted(glob.glob(os.path.join(root, "sql-on-fhir-v2", "tests", "*.json"))):
    for t in json.load(open(path, encoding="utf-8")).get("tests", []):
        if "view" in t:
            put("view_compile", f"v{n}", json.dumps(t["view"]))
            n += 1

# Searches.
for i, q in enumerate([
    "Patient?gender=female&birthdate=ge1970&_count=10",
    "Observation?code=http://loinc.org|8302-2&date=ge2015-01-01&value-quantity=gt5.4|http://unitsofmeasure.org|mg",
    "Observation?subject:Patient.gender=female&_sort=-date&_include=Observation:subject",
    "Condition?code:not=44054006&onset-date=eb2020&_summary=count",
    "Patient?name:contains=smi&address-postalcode=LS1&_elements=id,name",
]):
    put("search_params", f"q{i}", q)

# R4 examples into the validator.
for i, path in enumerate(sorted(glob.glob(os.path.join(root, "fhir-r4-examples", "**", "*.json"), recursive=True))[:300]):
    put("validate_json", f"e{i}", open(path, "rb").read())

# HL7 v2 messages, plain and MLLP-framed.
msgs = sorted(glob.glob(os.path.join(root, "fhir-converter-hl7v2", "input", "**", "*"), recursive=True))
for i, path in enumerate(p for p in msgs if os.path.isfile(p)):
    data = open(path, "rb").read()
    put("hl7v2", f"m{i}", data)
    if i % 4 == 0:
        put("mllp_frames", f"f{i}", b"\x0b" + data + b"\x1c\r" + b"\x0b" + data[:50])
print(f"seeds written to {out}")
