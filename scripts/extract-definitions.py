#!/usr/bin/env python3
"""Extract the compact R4 definitions Pennine carries in profiles/r4-core.json.

Reads ../shared/corpora/fhir-r4-definitions (the FHIR R4 4.0.1 definition bundles)
and writes what the node needs at run time: resource type names, the names of
choice elements, and every search parameter with its FHIRPath expression.
Run from the project root: python3 scripts/extract-definitions.py
"""
import json
import os

SRC = os.path.join("..", "shared", "corpora", "fhir-r4-definitions")


def load(name):
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return json.load(f)


resources = load("profiles-resources.json")
types = load("profiles-types.json")

resource_types = []
choice_names = set()
type_names = set()
summary = {}
for bundle in (resources, types):
    for e in bundle["entry"]:
        sd = e["resource"]
        if sd["resourceType"] != "StructureDefinition":
            continue
        # The R4 bundle carries one R4B definition (SubscriptionStatus, 4.3.0): not an R4 type.
        if sd.get("fhirVersion", "4.0.1") != "4.0.1":
            continue
        if sd.get("kind") == "resource" and not sd.get("abstract"):
            resource_types.append(sd["type"])
        if sd.get("kind") in ("primitive-type", "complex-type") and sd.get("derivation") == "specialization":
            type_names.add(sd["type"])
        for el in sd.get("snapshot", {}).get("element", []):
            path = el["path"]
            if path.endswith("[x]"):
                choice_names.add(path.rsplit(".", 1)[-1][:-3])
            parts = path.split(".")
            if sd.get("kind") == "resource" and len(parts) == 2 and el.get("isSummary"):
                summary.setdefault(sd["type"], []).append(parts[1].replace("[x]", ""))

params = []
for e in load("search-parameters.json")["entry"]:
    sp = e["resource"]
    if sp["type"] in ("composite", "special"):
        continue
    item = {
        "code": sp["code"],
        "base": sp["base"],
        "type": sp["type"],
        "expression": sp.get("expression", ""),
    }
    if sp.get("target"):
        item["target"] = sp["target"]
    params.append(item)

out = {
    "fhirVersion": "4.0.1",
    "source": "hl7.fhir.r4.core 4.0.1 definitions (profiles-resources, profiles-types, search-parameters)",
    "resourceTypes": sorted(resource_types),
    "dataTypes": sorted(type_names),
    "choiceElements": sorted(choice_names),
    "summaryElements": {t: summary[t] for t in sorted(summary) if t in resource_types},
    "searchParameters": params,
}
with open(os.path.join("profiles", "r4-core.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1, sort_keys=False)
    f.write("\n")
print(len(resource_types), "resource types,", len(params), "search parameters,", len(choice_names), "choice names")
