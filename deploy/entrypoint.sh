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
#   SHOAL_HEALTH_PORT    the daemon's plaintext gRPC health port, unless the
#                        arguments give --health-port (the image's HEALTHCHECK asks it)
#   SHOAL_ALLOW_ROOT=1   run a daemon as UID 0 anyway (a rootless runtime, where
#                        UID 0 is the unprivileged user outside); refused otherwise
#   SHOAL_KIT_SOURCE     optional read-only kit to stage into SHOAL_KIT_DIR first:
#                        Kubernetes mounts a Secret as group-readable symlinks, so
#                        the files are copied to a private 0600 kit (in memory).
#   SHOAL_WORKSPACE_DIR  optional workspace (jobs, models, logs) if not the kit folder
#
# The daemon is exec'd: it is PID 1's (tini's) only child and gets the
# container's SIGTERM, forwarded by tini, itself.
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

# Kits provisioned as root are root's (keys 0600): running the container as
# root to read them would give job code root. Say what to do instead.
if [ "$(id -u)" = 0 ] && [ "${SHOAL_ALLOW_ROOT:-}" != 1 ]; then
    cat >&2 <<EOF
shoal-entrypoint: refusing to run the $role as root (UID 0).
  Run the container as the kit's owner, or as the image's user 10001 after
  giving it the kit:   sudo chown -R 10001:10001 KIT_FOLDER
  (Compose: leave SHOAL_UID/SHOAL_GID unset, or set them to a non-root owner.)
  Set SHOAL_ALLOW_ROOT=1 only where UID 0 is unprivileged (rootless runtime).
EOF
    exit 2
fi

# unreadable FOLDER: the first file or folder under FOLDER this user cannot
# read (or, for a folder, enter), on stdout; nothing when all is readable.
unreadable() {
    find "$1" \( -type d \( ! -readable -o ! -executable \) -o ! -type d ! -readable \) \
        -print 2>/dev/null | head -n 1
}

# explain PATH WHAT [FOLDER]: which file, its owner and mode, who we are, what to run.
explain() {
    owner=$(stat -L -c '%u:%g' "$1" 2>/dev/null || echo '?')
    mode=$(stat -L -c '%a' "$1" 2>/dev/null || echo '?')
    cat >&2 <<EOF
shoal-entrypoint: cannot $2 $1
  owner $owner, mode $mode; this container runs as uid $(id -u) gid $(id -g).
  The startup kit must be readable (and its folder writable, when it is also
  the workspace) by the container's user. Either run the container as the
  kit's owner (docker run --user $owner; Compose SHOAL_UID/SHOAL_GID), or
  give the kit to the container's user on the host:
      sudo chown -R $(id -u):$(id -g) ${3:-$1}
EOF
    exit 2
}

if [ -n "${SHOAL_KIT_SOURCE:-}" ]; then
    if [ -d "$SHOAL_KIT_SOURCE" ]; then
        bad=$(unreadable "$SHOAL_KIT_SOURCE")
        if [ -n "$bad" ]; then explain "$bad" read "$SHOAL_KIT_SOURCE"; fi
    fi
    if [ ! -d "$SHOAL_KIT_SOURCE/startup" ]; then
        echo "shoal-entrypoint: no startup/ folder in SHOAL_KIT_SOURCE=$SHOAL_KIT_SOURCE" >&2
        exit 2
    fi
    (umask 077 && copy_tree "$SHOAL_KIT_SOURCE" "$kit_dir")
fi

if [ -e "$kit_dir" ]; then
    bad=$(unreadable "$kit_dir")
    if [ -n "$bad" ]; then explain "$bad" read "$kit_dir"; fi
fi

if [ ! -d "$kit_dir/startup" ]; then
    echo "shoal-entrypoint: no startup kit at $kit_dir (mount one or set SHOAL_KIT_DIR)" >&2
    exit 2
fi

if [ "$role" != admin ] && [ -z "${SHOAL_WORKSPACE_DIR:-}" ] && [ ! -w "$kit_dir" ]; then
    # The kit folder is the workspace: jobs, logs, the server's store.
    explain "$kit_dir" "write to the kit folder (the workspace)" "$kit_dir"
fi

if [ "$role" != admin ] && [ -n "${SHOAL_HEALTH_PORT:-}" ]; then
    given=""
    for arg in "$@"; do
        case "$arg" in --health-port | --health-port=*) given=1 ;; esac
    done
    if [ -z "$given" ]; then set -- --health-port "$SHOAL_HEALTH_PORT" "$@"; fi
fi

if [ "$role" != admin ] && [ -n "${SHOAL_WORKSPACE_DIR:-}" ]; then
    mkdir -p "$SHOAL_WORKSPACE_DIR"
    set -- --workspace "$SHOAL_WORKSPACE_DIR" "$@"
fi

exec "${SHOAL_PYTHON:-python3}" -m shoal "$role" --kit "$kit_dir" "$@"
