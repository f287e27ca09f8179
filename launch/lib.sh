# Shared by the launch scripts (sourced, not run): --dry-run parsing and printing.
# show CMD...  prints the command as one readable shell line (single quotes where needed)
# run CMD...   runs it, or shows it when DRY=1
show() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ [^A-Za-z0-9_./:=@,+%-] ]]; then out+="'${a//\'/\'\\\'\'}' "; else out+="$a "; fi
  done
  echo "${out% }"
}
run() { if [ "${DRY:-0}" = 1 ]; then show "$@"; else "$@"; fi; }

# parse_dry_run "$@"   sets DRY=1 when --dry-run is among the arguments (anywhere: first, last or
#                      between), and ARGS to the others; then: set -- "${ARGS[@]}"
parse_dry_run() {
  DRY=0; ARGS=()
  local a
  for a in "$@"; do
    if [ "$a" = "--dry-run" ]; then DRY=1; else ARGS+=("$a"); fi
  done
}
