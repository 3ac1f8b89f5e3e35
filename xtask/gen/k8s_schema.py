#!/usr/bin/env python3
"""Writes api/src/schema_table.rs: for every struct field of the served API groups whose
value is an object, a list or a map, its JSON name, its element type, and Kubernetes'
merge metadata (patchStrategy / patchMergeKey for strategic merge patch; +listType,
+listMapKey and +mapType for server-side apply); and the struct types marked
+structType=atomic, which server-side apply owns whole.

Input: a checkout of k8s.io/api (github.com/kubernetes/api). Usage:
    python3 xtask/gen/k8s_schema.py /path/to/kubernetes-api > api/src/schema_table.rs
The metav1 types (ObjectMeta, LabelSelector, ...) live in apimachinery; their few merge
fields are listed below by hand.
"""
import re
import subprocess
import sys

PACKAGES = ["core/v1", "apps/v1", "batch/v1", "coordination/v1", "discovery/v1", "rbac/v1",
            "certificates/v1", "policy/v1"]

# k8s.io/apimachinery/pkg/apis/meta/v1, from its types.go.
META = [
    ("meta.ObjectMeta", "labels", "", "map", "", "", ""),
    ("meta.ObjectMeta", "annotations", "", "map", "", "", ""),
    ("meta.ObjectMeta", "finalizers", "", "list", "merge", "", "set"),
    ("meta.ObjectMeta", "ownerReferences", "meta.OwnerReference", "list", "merge", "uid", "map:uid"),
    ("meta.ObjectMeta", "managedFields", "meta.ManagedFieldsEntry", "list", "", "", "atomic"),
    ("meta.LabelSelector", "matchLabels", "", "map", "", "", ""),
    ("meta.LabelSelector", "matchExpressions", "meta.LabelSelectorRequirement", "list", "", "", "atomic"),
    ("meta.LabelSelectorRequirement", "values", "", "list", "", "", "atomic"),
    ("meta.Condition", "", "", "", "", "", ""),
]
META_ATOMIC = ["meta.LabelSelector", "meta.OwnerReference"]

SCALARS = {"string", "bool", "int", "int32", "int64", "float64", "byte", "Time", "MicroTime",
           "Duration", "Quantity", "IntOrString", "UID", "RawExtension", "Protocol"}


def source(repo, path):
    return subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def main():
    repo = sys.argv[1]
    rows = []
    aliases_all = {}
    structs = {}
    atomic = set(META_ATOMIC)
    for pkg in PACKAGES:
        text = source(repo, f"{pkg}/types.go")
        prefix = pkg.replace("/", ".")
        imports = {}
        for m in re.finditer(r'^\s*(\w+)?\s*"k8s.io/(api|apimachinery)/([^"]+)"', text, re.M):
            alias, _, path = m.groups()
            alias = alias or path.split("/")[-1]
            if path.startswith("pkg/apis/meta/v1"):
                imports[alias] = "meta"
            elif "/" in path and not path.startswith("pkg/"):
                imports[alias] = path.replace("/", ".")
        # type X map[...]Y / type X []Y aliases (ResourceList, ...).
        for m in re.finditer(r'^type (\w+) (map\[[^\]]+\]\S+|\[\]\S+|string|int32|int64)\s*$', text, re.M):
            aliases_all[f"{prefix}.{m.group(1)}"] = m.group(2)
        for m in re.finditer(r'((?:^//[^\n]*\n)*)^type (\w+) struct \{\n(.*?)^\}', text, re.M | re.S):
            doc, name, body = m.groups()
            if re.search(r'^// \+structType=atomic', doc, re.M):
                atomic.add(f"{prefix}.{name}")
            structs[f"{prefix}.{name}"] = (prefix, imports, body)
    for full, (prefix, imports, body) in structs.items():
        markers = []
        for line in body.split("\n"):
            s = line.strip()
            if s.startswith("//"):
                markers.append(s)
                continue
            fm = re.match(r'([^`]+)`([^`]*)`', s)
            if not fm:
                markers = []
                continue
            tokens, tags = fm.group(1).split(), fm.group(2)
            # An embedded field (metav1.ObjectMeta) has only its type.
            gotype = tokens[-1]
            jm = re.search(r'json:"([^",]*)', tags)
            jname = jm.group(1) if jm else ""
            strategy = (re.search(r'patchStrategy:"([^"]*)"', tags) or [None, ""])[1]
            mkey = (re.search(r'patchMergeKey:"([^"]*)"', tags) or [None, ""])[1]
            list_type = ""
            keys = []
            for mk in markers:
                lm = re.match(r'// \+listType=(\w+)', mk)
                if lm:
                    list_type = lm.group(1)
                if re.match(r'// \+mapType=atomic', mk):
                    list_type = "atomic"
                km = re.match(r'// \+listMapKey=(\w+)', mk)
                if km:
                    keys.append(km.group(1))
            markers = []
            if list_type == "map":
                list_type = "map:" + ",".join(keys)
            t = gotype.lstrip("*")
            shape = ""
            if jname == "" and ",inline" in tags:
                continue
            # Resolve aliases of this package (ResourceList -> map).
            local = f"{prefix}.{t}" if "." not in t else None
            if local and local in aliases_all:
                t = aliases_all[local]
            if t.startswith("[]"):
                shape, t = "list", t[2:].lstrip("*")
            elif t.startswith("map["):
                shape, t = "map", t[t.index("]") + 1:].lstrip("*")
                if t.startswith("[]"):
                    t = t[2:]
            if t.startswith("[]"):
                t = t[2:]
            if "." in t:
                alias, base = t.split(".", 1)
                pkgname = imports.get(alias)
                elem = f"{pkgname}.{base}" if pkgname else ""
            elif t in SCALARS or t in ("byte",):
                elem = ""
            else:
                elem = f"{prefix}.{t}"
                if elem in aliases_all:
                    elem = ""
            if elem and elem.split(".")[-1] in SCALARS:
                elem = ""
            if elem and not elem.startswith("meta.") and elem not in structs:
                elem = ""
            if not shape and not elem:
                continue
            rows.append((full, jname, elem, shape, strategy, mkey, list_type))
    rows += [r for r in META if r[1]]
    rows.sort()
    print("// Generated by xtask/gen/k8s_schema.py from k8s.io/api; do not edit.")
    print("//! (type, JSON field, element type, shape, patchStrategy, patchMergeKey, listType or")
    print("//! mapType)")
    print()
    print("pub static FIELDS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[")
    for r in rows:
        print("    (" + ", ".join(f'"{x}"' for x in r) + "),")
    print("];")
    print()
    print("/// Struct types marked `+structType=atomic`.")
    print("pub static ATOMIC_STRUCTS: &[&str] = &[")
    for t in sorted(atomic):
        print(f'    "{t}",')
    print("];")


main()
