#!/usr/bin/env bash
# The documentation site (mkdocs.yml, docs/): build it as CI does, serve it, or photograph it.
#   bash launch/docs.sh build [SITE]        # mkdocs build --strict (default SITE: site/)
#   bash launch/docs.sh serve               # http://127.0.0.1:8000, rebuilt on every change
#   bash launch/docs.sh screenshots [SITE]  # build, then headless Chromium: SITE/_screenshots/
#                                           # home.png and own-model.png, and each page's title
# The tools come from requirements-docs.txt (`bash launch/setup.sh --tests` installs them);
# screenshots need Debian's chromium (`apt-get install chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export NO_MKDOCS_2_WARNING=1
what=${1:-build}
SITE=$(realpath -m "${2:-site}")
case "$what" in
  build) "$PY" -m mkdocs build --strict --site-dir "$SITE" ;;
  serve) exec "$PY" -m mkdocs serve ;;
  screenshots)
    "$PY" -m mkdocs build --strict --site-dir "$SITE"
    CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
    [ -n "$CHROME" ] || { echo "launch/docs.sh: no chromium (apt-get install chromium)" >&2; exit 2; }
    mkdir -p "$SITE/_screenshots"
    for page in index.html:home guides/own-model/index.html:own-model; do
      file=${page%%:*}; name=${page##*:}
      "$CHROME" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1600 \
        --screenshot="$SITE/_screenshots/$name.png" "file://$SITE/$file" 2>/dev/null
      title=$("$CHROME" --headless --no-sandbox --disable-gpu --dump-dom "file://$SITE/$file" \
        2>/dev/null | grep -o '<title>[^<]*</title>' | head -1)
      [ -n "$title" ] || { echo "$file: no title in the rendered page" >&2; exit 1; }
      echo "$SITE/_screenshots/$name.png  $(stat -c %s "$SITE/_screenshots/$name.png") bytes  $title"
    done ;;
  *) echo "usage: bash launch/docs.sh build|serve|screenshots [SITE]" >&2; exit 2 ;;
esac
