"""Refits the region's own models of tests/it/regress.rs with statsmodels and
compares them with Pennine's $regress.

The Rust test exports the rows through ViewDefinition/$run on a test node and
writes them, with each model asked and Pennine's reply, under
target/regress-check/. This script builds the same design (categorical
predictors as R's treatment contrasts: the reference first, the other levels
in sorted order), drops rows with a missing value, fits the GLM with
statsmodels and compares coefficients and standard errors to 1e-6 relative
(and the deviance, the null deviance and, for binomial and Poisson, the AIC).

Usage: python statsmodels_check.py [DIR]   (default target/regress-check)
"""

import json
import math
import os
import sys

import numpy as np
import statsmodels.api as sm

REL = 1e-6


def close(a, b, rel=REL):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def number(v):
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v)
    return None


def level(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def design(rows, model):
    predictors = [p if isinstance(p, dict) else {"column": p} for p in model.get("predictors", [])]
    offset_col = model.get("offset")
    usable = []
    for r in rows:
        y = number(r.get(model["outcome"]))
        if y is None:
            continue
        off = 0.0
        if offset_col:
            off = number(r.get(offset_col))
            if off is None:
                continue
        cells = []
        for p in predictors:
            v = level(r.get(p["column"])) if p.get("categorical") else number(r.get(p["column"]))
            if v is None:
                break
            cells.append(v)
        else:
            usable.append((y, off, cells))
    terms = ["(Intercept)"]
    columns = []
    for i, p in enumerate(predictors):
        if p.get("categorical"):
            levels = sorted({c[i] for _, _, c in usable})
            ref = p.get("reference", levels[0])
            others = [l for l in levels if l != ref]
            for l in others:
                terms.append(f"{p['column']}[{l}]")
                columns.append((i, l))
        else:
            terms.append(p["column"])
            columns.append((i, None))
    x = np.ones((len(usable), len(terms)))
    for r, (_, _, cells) in enumerate(usable):
        for j, (i, l) in enumerate(columns, start=1):
            x[r, j] = (1.0 if cells[i] == l else 0.0) if l is not None else cells[i]
    y = np.array([u[0] for u in usable])
    offset = np.array([u[1] for u in usable]) if offset_col else None
    return terms, x, y, offset


FAMILIES = {
    "gaussian": sm.families.Gaussian,
    "binomial": sm.families.Binomial,
    "poisson": sm.families.Poisson,
}


def check(folder, rows, family):
    path = os.path.join(folder, f"{family}.json")
    with open(path) as f:
        saved = json.load(f)
    model, fit = saved["model"], saved["fit"]
    terms, x, y, offset = design(rows, model)
    result = sm.GLM(y, x, family=FAMILIES[family](), offset=offset).fit(tol=1e-12, maxiter=100)
    problems = []
    if fit["n"] != len(y):
        problems.append(f"n: Pennine {fit['n']}, statsmodels {len(y)}")
    ours = {c["term"]: c for c in fit["coefficients"]}
    if list(ours) != terms:
        problems.append(f"terms: Pennine {list(ours)}, statsmodels {terms}")
    for j, term in enumerate(terms):
        c = ours.get(term)
        if c is None:
            continue
        for name, theirs in (("estimate", result.params[j]), ("stdError", result.bse[j])):
            if not close(c[name], float(theirs)):
                problems.append(f"{term} {name}: Pennine {c[name]!r}, statsmodels {float(theirs)!r}")
    figures = [("deviance", result.deviance), ("nullDeviance", result.null_deviance)]
    if family != "gaussian":
        # statsmodels counts the Gaussian variance as no parameter in its AIC; R and Pennine do.
        figures.append(("aic", result.aic))
    for name, theirs in figures:
        if not close(fit[name], float(theirs)):
            problems.append(f"{name}: Pennine {fit[name]!r}, statsmodels {float(theirs)!r}")
    print(f"{family}: {len(terms)} terms over {len(y)} rows; " + ("agrees" if not problems else "DIFFERS"))
    return problems


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "target/regress-check"
    rows_path = os.path.join(folder, "rows.json")
    if not os.path.exists(rows_path):
        message = f"{rows_path} is missing: run `cargo test --test it regress` first"
        if os.environ.get("CI") == "true":
            sys.exit("FAILED: " + message)
        print("SKIPPED: " + message)
        return
    with open(rows_path) as f:
        rows = json.load(f)
    problems = []
    for family in ("gaussian", "binomial", "poisson"):
        problems += [f"{family}: {p}" for p in check(folder, rows, family)]
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print("Pennine's $regress agrees with statsmodels for every family")


if __name__ == "__main__":
    main()
