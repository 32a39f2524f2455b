#!/usr/bin/env python3
"""Expands models/<name>/modular_<name>.cpp into the flat models/<name>/modeling_<name>.cpp.

    python tools/modular/modular.py            # regenerate every modeling file that has a modular shard
    python tools/modular/modular.py --check    # exit 1 (and list them) when a generated file is stale

A parent modeling file is cut into blocks at lines `// ---- block: Name ----`. A shard names its
parent, renames identifiers, and changes only what differs; every other block is copied from the
parent, renamed. The output is flat: a reader never needs to open the parent. Directives (each on a
line starting with `//!`):

    //! parent: llama                      models/llama/modeling_llama.cpp
    //! rename: Llama -> Qwen2              applied to the whole parent in one pass, longest first
    //! header                              replaces the file comment above the first block
    //! replace block Qwen2Config          replaces a block (named after renaming) ...
    //! edit block Qwen2Attention          ... or edits it: pairs of
    //! find                                  text that must occur exactly once in the block
    //! with                                  its replacement
    //! insert after Qwen2MLP block Qwen2Norm    a new block after an existing one
    //! remove block RobertaOnlyMLMHead     drops a parent block the derived model does not have
    //! end                                 closes header / replace / edit / insert

Anything outside directives in a shard is a comment for its reader and is not copied.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
MODELS = REPOSITORY / "models"
BLOCK = re.compile(r"^// ---- block: (\S+) ----$")


class ModularError(Exception):
    pass


def split_blocks(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first block, [(name, text including its header line)])."""
    header, blocks, current = [], [], None
    for line in text.splitlines(keepends=True):
        match = BLOCK.match(line.rstrip("\n"))
        if match:
            current = [match.group(1), line]
            blocks.append(current)
        elif current is None:
            header.append(line)
        else:
            current[1] += line
    return "".join(header), [(name, body) for name, body in blocks]


def parse_shard(path: Path) -> dict:
    shard = {"parent": None, "renames": [], "header": None, "operations": []}
    lines = path.read_text().splitlines(keepends=True)
    index = 0

    def collect(stop=("//! end",)):
        nonlocal index
        collected = []
        while index < len(lines):
            stripped = lines[index].strip()
            if any(stripped == marker for marker in stop):
                return "".join(collected), stripped
            collected.append(lines[index])
            index += 1
        raise ModularError(f"{path}: missing {' or '.join(stop)}")

    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line.startswith("//!"):
            continue
        directive = line[3:].strip()
        if directive.startswith("parent:"):
            shard["parent"] = directive.split(":", 1)[1].strip()
        elif directive.startswith("rename:"):
            old, _, new = directive.split(":", 1)[1].partition("->")
            shard["renames"].append((old.strip(), new.strip()))
        elif directive == "header":
            shard["header"], _ = collect()
            index += 1
        elif directive.startswith("replace block "):
            name = directive.removeprefix("replace block ").strip()
            body, _ = collect()
            index += 1
            shard["operations"].append(("replace", name, body))
        elif directive.startswith("insert after "):
            match = re.fullmatch(r"insert after (\S+) block (\S+)", directive)
            if not match:
                raise ModularError(f"{path}: expected `//! insert after EXISTING block NEW`, got `{line}`")
            body, _ = collect()
            index += 1
            shard["operations"].append(("insert", match.group(1), (match.group(2), body)))
        elif directive.startswith("remove block "):
            shard["operations"].append(("remove", directive.removeprefix("remove block ").strip(), None))
        elif directive.startswith("edit block "):
            name = directive.removeprefix("edit block ").strip()
            edits = []
            while True:
                if index >= len(lines):
                    raise ModularError(f"{path}: edit block {name}: missing //! end")
                marker = lines[index].strip()
                index += 1
                if marker == "//! end":
                    break
                if marker != "//! find":
                    if marker and not marker.startswith("//"):
                        raise ModularError(f"{path}: edit block {name}: expected //! find, got `{marker}`")
                    continue
                find, _ = collect(stop=("//! with",))
                index += 1
                replacement, stopped = collect(stop=("//! find", "//! end"))
                edits.append((find, replacement))
                if stopped == "//! end":
                    index += 1
                    break
            shard["operations"].append(("edit", name, edits))
        else:
            raise ModularError(f"{path}: unknown directive `{line}`")
    if shard["parent"] is None:
        raise ModularError(f"{path}: missing `//! parent: NAME`")
    return shard


def rename(text: str, renames: list[tuple[str, str]]) -> str:
    """All renames in one pass, longest first, so a replacement is never renamed again (with
    Bert -> Roberta and bert -> roberta, "Roberta" must not become "Rorobertaa")."""
    if not renames:
        return text
    table = dict(renames)
    pattern = re.compile("|".join(re.escape(old) for old in sorted(table, key=len, reverse=True)))
    return pattern.sub(lambda match: table[match.group(0)], text)


def expand(shard_path: Path) -> str:
    shard = parse_shard(shard_path)
    name = shard_path.parent.name
    parent_path = MODELS / shard["parent"] / f"modeling_{shard['parent']}.cpp"
    if not parent_path.exists():
        raise ModularError(f"{shard_path}: parent {parent_path} does not exist")
    parent_header, blocks = split_blocks(rename(parent_path.read_text(), shard["renames"]))
    names = [block_name for block_name, _ in blocks]
    bodies = dict(blocks)

    def require(block_name: str) -> None:
        if block_name not in bodies:
            raise ModularError(f"{shard_path}: block {block_name} is not in the renamed parent (blocks: {', '.join(names)})")

    for kind, block_name, payload in shard["operations"]:
        require(block_name)
        if kind == "replace":
            bodies[block_name] = f"// ---- block: {block_name} ----\n{payload}"
        elif kind == "edit":
            body = bodies[block_name]
            for find, replacement in payload:
                count = body.count(find)
                if count != 1:
                    raise ModularError(f"{shard_path}: edit block {block_name}: the text to find occurs {count} times "
                                       f"(expected once):\n{find}")
                body = body.replace(find, replacement)
            bodies[block_name] = body
        elif kind == "remove":
            names.remove(block_name)
            del bodies[block_name]
        elif kind == "insert":
            new_name, body = payload
            names.insert(names.index(block_name) + 1, new_name)
            bodies[new_name] = f"// ---- block: {new_name} ----\n{body}"
    relative_shard = shard_path.relative_to(REPOSITORY)
    relative_parent = parent_path.relative_to(REPOSITORY)
    banner = (f"// GENERATED by tools/modular/modular.py from {relative_shard} (parent: {relative_parent}).\n"
              f"// Do not edit: change the modular shard (or the parent) and run `python tools/modular/modular.py`.\n"
              f"//\n")
    header = shard["header"] if shard["header"] is not None else parent_header
    return banner + header + "".join(bodies[block_name] for block_name in names)


def shards() -> list[Path]:
    return sorted(MODELS.glob("*/modular_*.cpp"))


def generated_path(shard_path: Path) -> Path:
    return shard_path.with_name(shard_path.name.replace("modular_", "modeling_", 1))


def ordered(paths: list[Path]) -> list[Path]:
    """Parents before children (a shard may derive from a generated file)."""
    by_name = {path.parent.name: path for path in paths}
    result, visiting = [], set()

    def visit(path: Path) -> None:
        if path in result:
            return
        if path in visiting:
            raise ModularError(f"{path}: circular parent chain")
        visiting.add(path)
        parent = parse_shard(path)["parent"]
        if parent in by_name:
            visit(by_name[parent])
        result.append(path)

    for path in paths:
        visit(path)
    return result


def main() -> int:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--check", action="store_true", help="fail when a generated file is out of date")
    options = arguments.parse_args()
    stale = []
    try:
        for shard_path in ordered(shards()):
            text = expand(shard_path)
            target = generated_path(shard_path)
            if target.exists() and target.read_text() == text:
                continue
            if options.check:
                stale.append(target)
            else:
                target.write_text(text)
                print(f"wrote {target.relative_to(REPOSITORY)}")
    except ModularError as error:
        print(f"modular: {error}", file=sys.stderr)
        return 2
    if stale:
        for target in stale:
            print(f"modular: {target.relative_to(REPOSITORY)} is out of date; run python tools/modular/modular.py",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
