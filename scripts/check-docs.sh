#!/usr/bin/env bash
# The docs hold together: every relative Markdown link in README.md, docs/,
# bench/README.md and BENCHMARKS.md names a file or folder that exists, and
# every #anchor a heading that exists (GitHub's slugs), so a page moved or a
# heading renamed fails here instead of leaving a reader at a dead end. Also
# keeps the README the short front door it is meant to be (at most 300 lines).
#
# Run by scripts/test.sh; alone: `bash scripts/check-docs.sh [FILE.md ...]`
# (no arguments: the files above). Exit 1 naming each broken link.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

README_MAX_LINES=300

if (($# == 0)); then
  set -- README.md bench/README.md BENCHMARKS.md
  while IFS= read -r f; do set -- "$@" "$f"; done < <(find docs -name '*.md' 2>/dev/null | sort)
fi

command -v python3 >/dev/null || {
  echo "check-docs: python3 is needed (apt-get install python3)" >&2
  exit 1
}

status=0
if [[ -f README.md ]]; then
  lines=$(wc -l <README.md)
  if ((lines > README_MAX_LINES)); then
    echo "check-docs: README.md has $lines lines, more than $README_MAX_LINES: move the detail into docs/" >&2
    status=1
  fi
fi

python3 - "$@" <<'PY' || status=1
import os
import re
import sys
import unicodedata

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)\s*=\s*["']([^"']+)["']""", re.I)
# [text](target "title") and ![alt](target); the text may hold one level of
# brackets ([`x`][y] is rare enough to leave out).
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFDEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(path):
    """(line number, text) of every line outside fenced code blocks."""
    fence = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            m = FENCE.match(line)
            if fence:
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                    fence = None
                continue
            if m:
                fence = m.group(1)
                continue
            yield n, line


def heading_text(raw):
    """What GitHub renders of a heading: code kept, links and emphasis unwrapped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("`", "").replace("*", "")


def slug(raw):
    # GitHub: lower case, drop everything but letters, marks, digits, spaces,
    # hyphens and underscores, then each space to a hyphen (none collapsed).
    out = []
    for ch in heading_text(raw).lower():
        if ch == " ":
            out.append("-")
        elif ch in "-_" or unicodedata.category(ch)[0] in "LMN":
            out.append(ch)
    return "".join(out)


anchors_of = {}


def anchors(path):
    if path not in anchors_of:
        seen = {}
        found = set()
        for _, line in prose_lines(path):
            for a in HTML_ANCHOR.findall(line):
                found.add(a)
            m = ATX.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            # Repeated headings get -1, -2, ... in order, as on GitHub.
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        anchors_of[path] = found
    return anchors_of[path]


broken = []
for doc in sys.argv[1:]:
    if not os.path.isfile(doc):
        broken.append(f"{doc}: no such file")
        continue
    base = os.path.dirname(doc)
    for n, line in prose_lines(doc):
        prose = CODE_SPAN.sub("", line)
        targets = INLINE.findall(prose)
        m = REFDEF.match(prose)
        if m:
            targets.append(m.group(1))
        for target in targets:
            if not target or SCHEME.match(target) or target.startswith("//"):
                continue
            path, _, anchor = target.partition("#")
            path = path.split("?", 1)[0]
            dest = os.path.normpath(os.path.join(base, path)) if path else doc
            where = f"{doc}:{n}: ({target})"
            if path.startswith("/"):
                broken.append(f"{where} is absolute: it breaks on GitHub and in a clone elsewhere")
                continue
            if not os.path.exists(dest):
                broken.append(f"{where} {dest} does not exist")
                continue
            if anchor and dest.endswith(".md") and os.path.isfile(dest):
                if anchor not in anchors(dest):
                    broken.append(f"{where} {dest} has no heading #{anchor}")

for b in broken:
    print(f"check-docs: broken link: {b}", file=sys.stderr)
if broken:
    sys.exit(1)
PY

if ((status == 0)); then
  echo "check-docs: $# files, every relative link and anchor resolves"
fi
exit "$status"
