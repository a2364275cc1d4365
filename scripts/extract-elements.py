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


BEST_PRACTICE = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"
required_sets = set()


def constraints(el, sd, root):
    """The invariants an element declares itself (a root also keeps those it inherits:
    dom-* on resources). ele-1 is the structural validator's empty-element rule."""
    out = []
    for c in el.get("constraint", []):
        if c["key"] == "ele-1" or "expression" not in c:
            continue
        source = c.get("source", sd["url"])
        if not root and source != sd["url"]:
            continue
        item = {"key": c["key"], "severity": c["severity"], "human": c["human"], "expression": c["expression"]}
        if any(x.get("url") == BEST_PRACTICE and x.get("valueBoolean") for x in c.get("extension", [])):
            item["bestPractice"] = True
        out.append(item)
    return out


out = {"fhirVersion": "4.0.1", "source": "FHIR R4 profiles-types.json and profiles-resources.json", "types": {}}
for bundle in (load("profiles-types.json"), load("profiles-resources.json")):
    for e in bundle["entry"]:
        sd = e["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
            continue
        if sd["kind"] == "logical":
            continue
        # The R4 bundle carries one R4B definition (SubscriptionStatus, 4.3.0): not an R4 type.
        if sd.get("fhirVersion", "4.0.1") != "4.0.1":
            continue
        name = sd["type"]
        info = {"kind": sd["kind"], "abstract": sd.get("abstract", False), "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1]}
        elements = {}
        root = sd["snapshot"]["element"][0]
        info["constraints"] = constraints(root, sd, True)
        for el in sd["snapshot"]["element"][1:]:
            path = el["path"][len(name) + 1:]
            entry = {"min": el.get("min", 0), "max": el.get("max", "*")}
            if "contentReference" in el:
                entry["ref"] = el["contentReference"].lstrip("#")[len(name) + 1:]
            else:
                types = [type_code(t) for t in el.get("type", [])]
                entry["types"] = types
                targets = sorted({
                    tp.rsplit("/", 1)[-1]
                    for t in el.get("type", [])
                    if t["code"] == "Reference"
                    for tp in t.get("targetProfile", [])
                })
                if targets and "Resource" not in targets:
                    entry["targets"] = targets
                if sd["kind"] == "primitive-type" and path == "value":
                    for t in el.get("type", []):
                        for ext in t.get("extension", []):
                            if ext.get("url") == REGEX:
                                info["regex"] = ext["valueString"]
            own = constraints(el, sd, False)
            if own:
                entry["constraints"] = own
            binding = el.get("binding")
            if binding and binding.get("valueSet"):
                entry["binding"] = {"strength": binding["strength"], "valueSet": binding["valueSet"].split("|")[0]}
                if binding["strength"] == "required":
                    required_sets.add(entry["binding"]["valueSet"])
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

# The value sets bound with strength `required`, expanded where the R4
# definitions enumerate them (explicit concepts, whole local code systems,
# imported value sets). Sets that need an external terminology (UCUM, BCP-47,
# MIME types, SNOMED CT filters) are listed as not expanded: their bindings
# are not checked.
TERMINOLOGY = os.path.join("profiles", "r4-valuesets.json")
resources = {}
for name in ("valuesets.json", "v3-codesystems.json"):
    for e in load(name)["entry"]:
        r = e["resource"]
        if "url" in r:
            resources.setdefault((r["resourceType"], r["url"]), r)


def all_codes(concepts):
    for c in concepts:
        yield c["code"]
        yield from all_codes(c.get("concept", []))


def expand(url, seen=()):
    vs = resources.get(("ValueSet", url))
    if vs is None or url in seen:
        return None
    codes = {}
    for inc in vs.get("compose", {}).get("include", []):
        if inc.get("filter"):
            return None
        system = inc.get("system")
        for imported in inc.get("valueSet", []):
            sub = expand(imported.split("|")[0], seen + (url,))
            if sub is None:
                return None
            for s, cs in sub.items():
                codes.setdefault(s, set()).update(cs)
        if system is None:
            continue
        if inc.get("concept"):
            codes.setdefault(system, set()).update(c["code"] for c in inc["concept"])
            continue
        cs = resources.get(("CodeSystem", system))
        if cs is None or cs.get("content") != "complete":
            return None
        codes.setdefault(system, set()).update(all_codes(cs.get("concept", [])))
    for exc in vs.get("compose", {}).get("exclude", []):
        for c in exc.get("concept", []):
            codes.get(exc.get("system"), set()).discard(c["code"])
    return codes


expanded, skipped = {}, []
for url in sorted(required_sets):
    codes = expand(url)
    if codes:
        expanded[url] = {s: sorted(c) for s, c in sorted(codes.items())}
    else:
        skipped.append(url)
with open(TERMINOLOGY, "w", encoding="utf-8") as f:
    json.dump({"source": "FHIR R4 valuesets.json and v3-codesystems.json", "expanded": expanded, "notExpanded": skipped},
              f, separators=(",", ":"), sort_keys=True)
    f.write("\n")
print(f"wrote {TERMINOLOGY}: {len(expanded)} value sets expanded, {len(skipped)} need an external terminology")

# The R4 core extension definitions: where each may be used and what value it carries,
# for the check of extensions in the core namespace.
EXTENSIONS = os.path.join("profiles", "r4-extensions.json")
catalogue = {}
for e in load("extension-definitions.json")["entry"]:
    sd = e["resource"]
    if sd.get("resourceType") != "StructureDefinition" or sd.get("type") != "Extension":
        continue
    value_types, complex_ = [], False
    for el in sd.get("snapshot", {}).get("element", []):
        if el["path"] == "Extension.value[x]":
            if el.get("max") == "0":
                complex_ = True
            else:
                value_types = [t["code"] for t in el.get("type", [])]
    contexts = [{"type": c["type"], "expression": c["expression"]} for c in sd.get("context", [])]
    catalogue[sd["url"]] = {"valueTypes": value_types, "complex": complex_, "contexts": contexts}
with open(EXTENSIONS, "w", encoding="utf-8") as f:
    json.dump({"source": "FHIR R4 extension-definitions.json", "extensions": catalogue}, f, separators=(",", ":"), sort_keys=True)
    f.write("\n")
print(f"wrote {EXTENSIONS}: {len(catalogue)} extension definitions")
