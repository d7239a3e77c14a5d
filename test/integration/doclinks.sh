#!/usr/bin/env bash
# README.md and docs/ link only inside the repository, and every relative link resolves
# (docs/testing.md). For each Markdown file: every inline link, image and reference
# definition that is not a URL (scheme:...) must name a file or directory that exists,
# inside the repository (no `../shared`); a `#anchor` on a Markdown file (or alone, for
# the same file) must be one of the anchors GitHub generates for that file's headings
# (lowercased, punctuation other than `-` and `_` dropped, each space a `-`, a repeated
# heading suffixed -1, -2...) or an explicit <a name/id>. Links in code spans and fenced
# blocks are text, not links. One PASS per file checked, one FAIL per broken link.
# Needs no build. Self-test: a scratch tree with known good and bad links first.
source "$(dirname "$0")/../lib.sh"

cat >"$TMP/doclinks.py" <<'PY'
import os, re, sys, unicodedata
from urllib.parse import unquote

root = os.path.realpath(sys.argv[1])
files = sys.argv[2:]
FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})')
HEADING = re.compile(r'^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*(?:#+[ \t]*)?$')
REFDEF = re.compile(r'^ {0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)')
SCHEME = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:')
HTML_ANCHOR = re.compile(r'<a\s+[^>]*?\b(?:name|id)\s*=\s*"([^"]+)"', re.I)

def lines_outside_fences(path):
    """(line number, text) of every line not inside a fenced code block."""
    fence = None
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip('\n')
            m = FENCE.match(line)
            if fence is None and m:
                fence = m.group(1)[0] * len(m.group(1))
                continue
            if fence is not None:
                if line.strip().startswith(fence) and line.strip().strip(fence[0]) == '':
                    fence = None
                continue
            yield n, line

def strip_code_spans(text):
    # a code span opens and closes with the same number of backticks
    return re.sub(r'(`+)(.+?)\1', lambda m: ' ' * len(m.group(0)), text)

def heading_text(raw):
    """The text GitHub renders for a heading's inline Markdown."""
    t = re.sub(r'(`+)(.+?)\1', lambda m: m.group(2).strip(), raw)   # code: its content
    t = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', t)                # links/images: their text
    t = re.sub(r'<[^>]+>', '', t)                                   # inline HTML tags
    t = re.sub(r'\\([!-/:-@\[-`{-~])', r'\1', t)                    # backslash escapes
    t = re.sub(r'(\*\*|__|\*|~~)', '', t)                           # emphasis (not a word's _)
    t = t.replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>')
    return t.strip()

def slug(text):
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in '-_' or cat[0] in 'LNM':
            out.append(ch)
        elif ch == ' ':
            out.append('-')
    return ''.join(out)

_anchors = {}
def anchors(path):
    if path not in _anchors:
        seen, ids = {}, set()
        for _, line in lines_outside_fences(path):
            for a in HTML_ANCHOR.findall(line):
                ids.add(a)
            m = HEADING.match(line)
            if not m:
                continue
            s = slug(heading_text(m.group(2)))
            k = seen.get(s, 0)
            seen[s] = k + 1
            ids.add(s if k == 0 else '%s-%d' % (s, k))
        _anchors[path] = ids
    return _anchors[path]

def targets(line):
    """Link targets on one line: inline links/images, then a reference definition."""
    text = strip_code_spans(line)
    text = re.sub(r'<[A-Za-z][A-Za-z0-9+.-]*:[^>\s]*>', ' ', text)   # autolinks
    for m in re.finditer(r'\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+"[^"]*")?\s*\)', text):
        yield m.group(1)
    m = REFDEF.match(text)
    if m:
        yield m.group(1)

bad = 0
for f in files:
    fpath = os.path.realpath(f)
    count = 0
    for n, line in lines_outside_fences(fpath):
        for t in targets(line):
            count += 1
            t = t[1:-1] if t.startswith('<') else t
            if SCHEME.match(t):
                continue
            path, _, frag = t.partition('#')
            dest = fpath if path == '' else os.path.realpath(
                os.path.join(os.path.dirname(fpath), unquote(path)))
            if path.startswith('/'):
                print('FAIL: %s:%d: %s is absolute (GitHub resolves it from the site root)' % (f, n, t)); bad += 1
                continue
            if not (dest == root or dest.startswith(root + os.sep)):
                print('FAIL: %s:%d: %s points outside the repository' % (f, n, t)); bad += 1
                continue
            if not os.path.exists(dest):
                print('FAIL: %s:%d: %s: no such file' % (f, n, t)); bad += 1
                continue
            if frag and dest.endswith('.md') and os.path.isfile(dest):
                if unquote(frag) not in anchors(dest):
                    print('FAIL: %s:%d: %s: no heading with anchor #%s in %s'
                          % (f, n, t, frag, os.path.relpath(dest, root))); bad += 1
    print('CHECKED: %s %d' % (f, count))
sys.exit(1 if bad else 0)
PY

# run_check ROOT FILES...: the checker's output in $OUT, its exit code in $RC
run_check() { OUT=$(python3 "$TMP/doclinks.py" "$@" 2>&1); RC=$?; }

# ---- self-test on a scratch tree ----------------------------------------------------
S=$TMP/tree
mkdir -p "$S/docs/sub" "$S/shared"
cat >"$S/docs/a.md" <<'MD'
# Title
## Config keys (`max_body_bytes`, **bounds**) & more
## Config keys (`max_body_bytes`, **bounds**) & more
### Hostile HTTP/1.1: what is refused -> 400
<a name="custom-spot"></a>
```sh
# not a heading
see [in a fence](nope.md)
```
Good: [b](sub/b.md), [b's part](sub/b.md#part-two), [self](#title), [dup](#config-keys-max_body_bytes-bounds--more-1),
[arrow](#hostile-http11-what-is-refused---400), [custom](#custom-spot), [dir](sub/), [web](https://example.com/x.md),
![img](sub/b.md), `[code](nope.md)`, [ref][r].

[r]: sub/b.md#part-two
MD
printf '# B\n## Part two\n' >"$S/docs/sub/b.md"
printf '# shared\n' >"$S/shared/DESIGN.md"
run_check "$S/docs" "$S/docs/a.md"
expect_eq "self-test: good links (headings with code, emphasis, duplicates, arrows; fences and code spans skipped) pass" \
    "$RC $OUT" "0 CHECKED: $S/docs/a.md 10"

cat >"$S/docs/bad.md" <<'MD'
# Bad
[missing](sub/none.md) [anchor](sub/b.md#part-three) [self](#nope) [up](../shared/DESIGN.md)
[case](#Bad) [abs](/docs/a.md)

[r]: sub/gone.md
MD
run_check "$S/docs" "$S/docs/bad.md"
n=$(grep -c '^FAIL: ' <<<"$OUT")
expect_eq "self-test: a missing file, a missing anchor (other file and same file), a link outside the tree, a wrong-case anchor, an absolute path and a bad reference are each a FAIL" \
    "$RC $n" "1 7"
expect_match "... the outside link is named" "$OUT" "\.\./shared/DESIGN\.md points outside the repository"
expect_match "... the missing anchor is named with its file" "$OUT" "no heading with anchor #part-three in sub/b\.md"

# ---- README.md and docs/ --------------------------------------------------------------
mapfile -t docs < <(cd "$REMORA_ROOT" && { echo README.md; find docs -name '*.md' | sort; })
check "there are docs to check (${#docs[@]} files)" test "${#docs[@]}" -gt 10
run_check "$REMORA_ROOT" "${docs[@]}"
grep '^FAIL: ' <<<"$OUT"
_fails=$((_fails + $(grep -c '^FAIL: ' <<<"$OUT" || true)))
while read -r _ f c; do
    grep -q "^FAIL: $f:" <<<"$OUT" || pass "$f: $c links resolve"
done < <(grep '^CHECKED: ' <<<"$OUT")
expect_eq "checked every file" "$(grep -c '^CHECKED: ' <<<"$OUT")" "${#docs[@]}"
expect_eq "no ../shared anywhere in README.md or docs/ (grep)" \
    "$(grep -rn '\.\./shared' README.md docs | head -5)" ""
finish
