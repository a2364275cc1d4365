#!/usr/bin/env python3
"""Extract the R4 element model Pennine's validator needs into profiles/r4-elements.json.

Reads ../shared/corpora/fhir-r4-definitions (profiles-types.json and
profiles-resources.json, FHIR R4 4.0.1) and writes, for every resource and data
type, its elements (path relative to the type, min, max, allowed types, whether
it is a choice, and the target of a contentReference), and for every primitive
type the regular expression its value must match.
Run from the project root: python3 scripts/extract-elements.py
"""
import json
import os

SRC = os.path.join("..", "shared", "corpora", "fhir-r4-definitions")
OUT = os.path.join("profiles", "r4-elements.json")
REGEX = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_TYPE = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def load(name):
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return json.load(f)


def type_code(t):
    """The FHIR type of an element type entry (System.String on `value` is the primitive itself)."""
    for ext in t.get("extension", []):
        if ext.get("url") == FHIR_TYPE:
            return ext.get("valueUrl") or ext.get("valueUri")
    return t["code"]


out = {"fhirVersion": "4.0.1", "source": "FHIR R4 profiles-types.json and profiles-resources.json", "types": {}}
for bundle in (load("profiles-types.json"), load("profiles-resources.json")):
    for e in bundle["entry"]:
        sd = e["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
            continue
        if sd["kind"] == "logical":
            continue
        name = sd["type"]
        info = {"kind": sd["kind"], "abstract": sd.get("abstract", False), "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1]}
        elements = {}
        for el in sd["snapshot"]["element"][1:]:
            path = el["path"][len(name) + 1:]
            entry = {"min": el.get("min", 0), "max": el.get("max", "*")}
            if "contentReference" in el:
                entry["ref"] = el["contentReference"].lstrip("#")[len(name) + 1:]
            else:
                types = [type_code(t) for t in el.get("type", [])]
                entry["types"] = types
                if sd["kind"] == "primitive-type" and path == "value":
                    for t in el.get("type", []):
                        for ext in t.get("extension", []):
                            if ext.get("url") == REGEX:
                                info["regex"] = ext["valueString"]
            if path.endswith("[x]"):
                entry["choice"] = True
                path = path[:-3]
            elements[path] = entry
        info["elements"] = elements
        out["types"][name] = info

with open(OUT, "w", encoding="utf-8") as f:
    json.dump(out, f, separators=(",", ":"), sort_keys=True)
    f.write("\n")
print(f"wrote {OUT}: {len(out['types'])} types")
