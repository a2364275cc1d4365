#!/usr/bin/env python3
"""Writes profiles/pathways/valuesets.json: the CHC North West Coast code lists as FHIR
ValueSets, from the transcribed lists in ../shared/pathways (code-lists.csv,
admission-methods.csv, treatment-functions.csv). Run from the repository root; the
output is committed (the node compiles it in) and a test checks it against the lists."""
import csv, json, os, sys

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "pathways")
BASE = "https://pennine.nhs.example/fhir/ValueSet/"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ADMISSION = "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdmissionMethodEngland"
TREATMENT = "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-TreatmentFunction"


def value_set(vid, title, system, codes):
    return {
        "resourceType": "ValueSet",
        "id": vid,
        "url": BASE + vid,
        "version": "1.0.0",
        "name": vid.replace("-", "_"),
        "title": title,
        "status": "active",
        "publisher": "Pennine (transcribed from the Connected Health Cities North West Coast pathway algorithms 1.0)",
        "compose": {"include": [{"system": system, "concept": [{"code": c} for c in codes]}]},
    }


def rows(name):
    with open(os.path.join(SRC, name), newline="") as f:
        return list(csv.DictReader(f))


out = []
lists = {}
for r in rows("code-lists.csv"):
    lists.setdefault(r["list"], []).append(r["icd10"])
for name, codes in sorted(lists.items()):
    out.append(value_set("chc-" + name, f"CHC NWC code list {name}", ICD10, codes))
out.append(value_set("chc-emergency-admission-methods", "Emergency admission methods",
                     ADMISSION, [r["code"] for r in rows("admission-methods.csv") if r["list"] == "emergency"]))
out.append(value_set("chc-medical-treatment-functions", "Medical treatment functions",
                     TREATMENT, [r["code"] for r in rows("treatment-functions.csv") if r["list"] == "medical"]))
bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": v} for v in out]}
path = sys.argv[1] if len(sys.argv) > 1 else "profiles/pathways/valuesets.json"
with open(path, "w") as f:
    json.dump(bundle, f, indent=1)
    f.write("\n")
print(f"wrote {len(out)} value sets to {path}")
