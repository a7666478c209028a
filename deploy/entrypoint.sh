#!/bin/sh
# shoal-entrypoint: start one participant from a startup kit mounted in the container.
#
#   shoal-entrypoint server  [ARGS...]  -> python -m shoal server --kit $SHOAL_KIT_DIR [--workspace W] ARGS
#   shoal-entrypoint client  [ARGS...]  -> python -m shoal client --kit $SHOAL_KIT_DIR [--workspace W] ARGS
#   shoal-entrypoint admin   [ARGS...]  -> python -m shoal admin  --kit $SHOAL_KIT_DIR ARGS
#   shoal-entrypoint CMD     [ARGS...]  -> CMD ARGS (e.g. `shoal provision`, `bash`)
#
# Environment:
#   SHOAL_KIT_DIR        the kit folder the daemon uses (default /opt/shoal/kit)
#   SHOAL_KIT_SOURCE     optional read-only kit to stage into SHOAL_KIT_DIR first:
#                        Kubernetes mounts a Secret as group-readable symlinks, so
#                        the files are copied to a private 0600 kit (in memory).
#   SHOAL_WORKSPACE_DIR  optional workspace (jobs, models, logs) if not the kit folder
#
# The daemon is exec'd so it is PID 1 and gets the container's SIGTERM itself.
set -eu

kit_dir="${SHOAL_KIT_DIR:-/opt/shoal/kit}"

# copy_tree SRC DST: regular files and folders only, following symlinks; dot
# entries (a Secret volume's ..data bookkeeping) are skipped by the glob.
copy_tree() {
    mkdir -p "$2"
    for entry in "$1"/*; do
        [ -e "$entry" ] || continue
        if [ -d "$entry" ]; then
            copy_tree "$entry" "$2/${entry##*/}"
        else
            cp -L "$entry" "$2/${entry##*/}"
        fi
    done
}

case "${1:-}" in
    server | client | admin)
        role="$1"
        shift
        ;;
    "" | -h | --help)
        sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
        if [ -z "${1:-}" ]; then exit 2; fi
        exit 0
        ;;
    *)
        exec "$@"
        ;;
esac

if [ -n "${SHOAL_KIT_SOURCE:-}" ]; then
    if [ ! -d "$SHOAL_KIT_SOURCE/startup" ]; then
        echo "shoal-entrypoint: no startup/ folder in SHOAL_KIT_SOURCE=$SHOAL_KIT_SOURCE" >&2
        exit 2
    fi
    (umask 077 && copy_tree "$SHOAL_KIT_SOURCE" "$kit_dir")
fi

if [ ! -d "$kit_dir/startup" ]; then
    echo "shoal-entrypoint: no startup kit at $kit_dir (mount one or set SHOAL_KIT_DIR)" >&2
    exit 2
fi

if [ "$role" != admin ] && [ -n "${SHOAL_WORKSPACE_DIR:-}" ]; then
    mkdir -p "$SHOAL_WORKSPACE_DIR"
    set -- --workspace "$SHOAL_WORKSPACE_DIR" "$@"
fi

exec "${SHOAL_PYTHON:-python}" -m shoal "$role" --kit "$kit_dir" "$@"
