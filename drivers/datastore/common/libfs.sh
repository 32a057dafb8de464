# shellcheck shell=bash
# ---------------------------------------------------------------------------
# libfs.sh - helpers shared by the oned-images datastore driver scripts.
# Sourced (never executed) by drivers/datastore/<DS_MAD>/<action>, and by
# drivers/tm/common/tm_common.sh for the TM drivers' logging, failures and clean-up.
#
# Requires Debian packages: bash coreutils findutils util-linux python3 e2fsprogs xfsprogs
# Optional: qemu-utils (qemu-img: needed for qcow2 & co; raw images work without it),
# xz-utils (fast size of .xz images)
#
# Calling contract (OpenNebula >= 6.8, 7.0):
#   <action> <id>      base64 DS_DRIVER_ACTION_DATA on stdin, then EOF.
#   Also accepted: "<action> - <id>" (6.6.2+ stdin form) and
#   "<action> <base64> <id>" (<= 6.6.1 argv form).
#   Success: exit 0, result on stdout (one line; monitor: KEY=VALUE lines).
#   Failure: exit 1, the error text as ONE plain line on stderr (never
#   starting with '-', which oned would drop).  Temporary and partial files
#   are removed before exiting.
#   Log lines on stderr: "INFO: <script>: text", "WARN: ...", "ERROR: ...",
#   "DEBUG: ..." (the script name keeps a leading number in the text from
#   being taken for an object id by the driver's log regexp).
#
# Error texts (beginning of the line; details may follow):
#   all     Datastore BASE_PATH is not set | ... must be an absolute path
#           Cannot decode/parse driver action data ...   (bad stdin document)
#           <script> failed: unexpected error in '<command>' (exit code N)
#           <script> interrupted by signal <SIG>
#   cp      Not allowed to copy image file <real path> (...)   SAFE/RESTRICTED_DIRS,
#                   $HOME or ONED_PROTECTED_PATHS (stat too)
#           Cannot read image file <path> (No such file or directory|Permission denied|
#                   Not a regular file|...)
#           Unsupported image source <url>
#           Error downloading <url>: <reason>   e.g. "The requested URL returned error:
#                   404", "address <ip> is not allowed by the URL import policy: ...",
#                   "no data received for N seconds", "Maximum (10) redirects followed"
#           Hash does not match: <MD5|SHA1> expected <x>, got <y>
#           Error copying image file <path>: <tool error>   (also disk full)
#           Error decompressing <src>: <tool error>
#           Unknown image format[: <qemu-img error>]
#           Image has a backing file (<file>), refusing it
#           Image refers to another file (<file>), refusing it  (vmdk extent, qcow2 data file)
#           Error converting image to <fmt>: <qemu-img error>
#   cp,stat,mkfs,clone without qemu-img (raw images need none):
#           qemu-img is required to import <fmt> images|convert images to <fmt>|
#                   create qcow2 images (install Debian package qemu-utils)
#   mkfs    Invalid image size '<size>' | Unsupported image format <fmt>
#           Unsupported file system type <fs>
#           Error creating image: <tool error>
#           Error creating <fs> file system: <tool error>
#   clone   Cannot read source image <path> (...)
#           Error cloning image <src>: <tool error>
#   rm      Bad formed or unavailable Image source <src> (...)
#           Error removing image <src>: <tool error>
#   stat    cannot access '<path>' (No such file or directory|Permission denied|
#                   Not a regular file)
#           cannot access '<url>' (<reason, as for cp's Error downloading>)
#           Cannot determine the size of <path>: <reason>
#   monitor Cannot create datastore directory <dir>: ... | Error monitoring datastore <dir>: ...
#   snap_*  Bad formed or unavailable Image source <src> (...)
#           Invalid snapshot id '<id>' | Snapshot <id> does not exist
#           Cannot revert to snapshot <id>: it is the active image state
#           Error reverting/flattening/deleting snapshot <id>: <tool error>
#
# Environment (set by the daemon's runner for every action; see README, Drivers):
#   ONED_PROTECTED_PATHS  newline-separated files and directories of the daemon
#                         (database and its -journal/-wal/-shm, configuration,
#                         credentials, log, VAR_LOCATION): never readable through an
#                         image, whatever SAFE_DIRS says ("Not allowed to copy ...").
#   ONED_URL_POLICY       "open" when the image owner is oneadmin (uid 0 or group 0),
#                         else "restricted" (also when unset): URL imports may then
#                         reach only public unicast addresses, or the networks of the
#                         datastore's URL_ALLOWED_NETWORKS (e.g. "10.1.0.0/16
#                         192.168.7.0/24"), checked on every connection and redirect.
#   ONED_STALL_TIMEOUT    seconds without a byte before a transfer fails
#                         ("Error downloading <url>: no data received for N seconds");
#                         DRIVER_STALL_TIMEOUT in the daemon's config, 60 by default.
#   ONED_COPY_MAX_MB      MiB a cp may write (DRIVER_COPY_MAX_MB; 0 = no limit of its
#                         own): "Image <path> exceeds N MiB, ..." (fs_action.copy_limit,
#                         which also bounds a copy by the datastore's FREE_MB/LIMIT_MB).
#   ONED_CAPACITY_CHECK   cp only: NO when its allocate did not check the space; the
#                         copy is then not bounded by FREE_MB/LIMIT_MB.
#   TMPDIR                a private directory of the action, removed when it ends and
#                         swept at the daemon's start.
#
# Local sources are read by common/image_source.py: it opens the path once, checks
# the real path of the open descriptor (/proc/self/fd/N) and reads only from that
# descriptor, so a symlink swapped in after the check changes nothing.
#
# Differences from OpenNebula's stock fs scripts: nothing runs over ssh
# (BRIDGE_LIST, NFS auto-mount and STAGING_DIR are ignored); sources are
# local paths, file:// and http(s):// only (no ssh/s3/rbd/lxd/restic/...);
# tar/zip archives are stored as they are, not unpacked; https certificates
# ARE verified (stock uses curl -k); a remote source is fetched once; both
# MD5 and SHA1 are checked when both are set; failures leave no files;
# rm of a missing SOURCE succeeds; STAT measures remote compressed images
# (see fs/stat); images with a backing file are refused by cp.
# ---------------------------------------------------------------------------

set -eEuo pipefail
shopt -s inherit_errexit

export LANG=C LC_ALL=C
PATH=${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}

# (no cd: the scripts never change directory, so a relative LIBFS_DIR stays valid)
if [[ ${BASH_SOURCE[0]} == */* ]]; then LIBFS_DIR=${BASH_SOURCE[0]%/*}; else LIBFS_DIR=.; fi
DRV_ACTION_PY="$LIBFS_DIR/drv_action.py"
IMAGE_SOURCE_PY="$LIBFS_DIR/image_source.py"
PROGRESS_RUN_PY="$LIBFS_DIR/progress_run.py"
DRV_PYTHON=${DRV_PYTHON:-python3}
# -I -S: no user site, no PYTHON* variables, no site packages (the helpers need only
# the standard library); a few ms less of every action's start-up.
DRV_PYTHON_FLAGS=(-I -S)
SCRIPT_NAME=${0##*/}

# Timeout (s) for STAT measurements that need a full remote download.
export FS_STAT_REMOTE_TIMEOUT=${FS_STAT_REMOTE_TIMEOUT:-75}

DRV_ACTION=
ID=
_FAIL_REPORTED=0
_ERR_CMD=
_ERR_RC=0
_CLEAN_ON_FAIL=()
_CLEAN_ALWAYS=()

# ------------------------------------------------------------------ logging --

_one_line() {
    local s=$*
    s=${s//$'\r'/}
    s=${s//$'\n'/; }
    printf '%s' "$s"
}

log_info()  { printf 'INFO: %s: %s\n' "$SCRIPT_NAME" "$(_one_line "$*")" >&2; }
log_warn()  { printf 'WARN: %s: %s\n' "$SCRIPT_NAME" "$(_one_line "$*")" >&2; }
log_error() { printf 'ERROR: %s: %s\n' "$SCRIPT_NAME" "$(_one_line "$*")" >&2; }
log_debug() { printf 'DEBUG: %s: %s\n' "$SCRIPT_NAME" "$(_one_line "$*")" >&2; }

# fail TEXT...: print TEXT as the (single line) error text and exit 1.
# Never call it inside $(...): the exit would only leave the subshell.
fail() {
    local msg
    msg=$(_one_line "$*")
    msg=${msg#"${msg%%[![:space:]]*}"}
    [ -n "$msg" ] || msg="$SCRIPT_NAME failed"
    case $msg in
        -* | INFO:* | WARN:* | ERROR:* | DEBUG:*) msg="Error: $msg" ;;
    esac
    _FAIL_REPORTED=1
    printf '%s\n' "$msg" >&2
    exit 1
}

# err_summary FILE: first (at most 3) non-empty lines of a tool's output,
# joined with "; ", cut at 500 characters, stopping at a usage text.
err_summary() {
    local line out="" n=0
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line//$'\r'/}
        line=${line#"${line%%[![:space:]]*}"}
        [ -n "$line" ] || continue
        case $line in Usage:* | usage:*) [ -n "$out" ] && break ;; esac
        out+="${out:+; }$line"
        n=$((n + 1))
        [ "$n" -lt 3 ] || break
    done <"$1"
    [ "${#out}" -le 500 ] || out="${out:0:497}..."
    printf '%s' "$out"
}

# ----------------------------------------------------- traps and clean-up --

_on_err() {
    _ERR_RC=$1
    _ERR_CMD=$2
}

_on_exit() {
    local rc=$?
    set +eE
    trap - ERR
    if [ "$rc" -ne 0 ]; then
        if [ "$_FAIL_REPORTED" -eq 0 ]; then
            if [ -n "$_ERR_CMD" ]; then
                printf "%s failed: unexpected error in '%s' (exit code %s)\n" \
                    "$SCRIPT_NAME" "$(_one_line "$_ERR_CMD")" "$_ERR_RC" >&2
            else
                printf '%s failed (exit code %s)\n' "$SCRIPT_NAME" "$rc" >&2
            fi
        fi
        if [ "${#_CLEAN_ON_FAIL[@]}" -gt 0 ]; then
            rm -rf -- "${_CLEAN_ON_FAIL[@]}" 2>/dev/null
        fi
    fi
    if [ "${#_CLEAN_ALWAYS[@]}" -gt 0 ]; then
        rm -rf -- "${_CLEAN_ALWAYS[@]}" 2>/dev/null
    fi
    exit "$rc"
}

_on_signal() {
    trap - HUP INT TERM
    fail "$SCRIPT_NAME interrupted by signal $1"
}

trap '_on_err "$?" "$BASH_COMMAND"' ERR
trap _on_exit EXIT
trap '_on_signal HUP' HUP
trap '_on_signal INT' INT
trap '_on_signal TERM' TERM

# cleanup_on_fail PATH...: remove PATH(s) if the script fails.
cleanup_on_fail() { _CLEAN_ON_FAIL+=("$@"); }

# make_tmp VAR: create a temporary file (always removed at exit), name in VAR.
make_tmp() {
    local _mt_f
    _mt_f=$(mktemp "${TMPDIR:-/tmp}/one-ds-XXXXXXXX") ||
        fail "Cannot create a temporary file in ${TMPDIR:-/tmp}"
    _CLEAN_ALWAYS+=("$_mt_f")
    printf -v "$1" '%s' "$_mt_f"
}

# ----------------------------------------------------- running commands --

# run "error text" CMD [ARG...]: run CMD (argv, never a shell string) with
# its stdout and stderr captured; on failure: fail "error text: <summary>".
run() {
    local _r_msg=$1 _r_log _r_rc=0 _r_sum
    shift
    make_tmp _r_log
    log_debug "$*"
    "$@" >"$_r_log" 2>&1 || _r_rc=$?
    [ "$_r_rc" -ne 0 ] || return 0
    _r_sum=$(err_summary "$_r_log")
    fail "$_r_msg: ${_r_sum:-exit code $_r_rc}"
}

# run_progress "error text" TOTAL WATCH CMD [ARG...]: like run, and while CMD runs
# "INFO: progress <done> <total>" lines (bytes) go to stderr at most once a second,
# read live by the daemon: WATCH "qemu" (CMD is qemu-img convert -p: its percentage
# of TOTAL), a FILE (its size so far) or +FILE (its allocated bytes).  TOTAL 0 = unknown.
run_progress() {
    local _rp_msg=$1 _rp_total=$2 _rp_watch=$3
    shift 3
    run "$_rp_msg" "$DRV_PYTHON" "$PROGRESS_RUN_PY" "$_rp_total" "$_rp_watch" -- "$@" 3>&2
}

# capture VAR "error text" CMD [ARG...]: like run, stdout stored in VAR.
capture() {
    local _c_var=$1 _c_msg=$2 _c_out _c_err _c_rc=0 _c_sum
    shift 2
    make_tmp _c_err
    _c_out=$("$@" 2>"$_c_err") || _c_rc=$?
    if [ "$_c_rc" -ne 0 ]; then
        _c_sum=$(err_summary "$_c_err")
        fail "$_c_msg: ${_c_sum:-exit code $_c_rc}"
    fi
    printf -v "$_c_var" '%s' "$_c_out"
}

# ------------------------------------------------------ driver action data --

# drv_init "$@": read the id and the DS_DRIVER_ACTION_DATA document.
drv_init() {
    case $# in
        1)
            ID=$1
            DRV_ACTION=$(cat) || fail "Cannot read driver action data from stdin"
            ;;
        2)
            ID=$2
            if [ "$1" = "-" ]; then
                DRV_ACTION=$(cat) || fail "Cannot read driver action data from stdin"
            else
                DRV_ACTION=$1
            fi
            ;;
        *) fail "Usage: $SCRIPT_NAME <id> (base64 DS_DRIVER_ACTION_DATA on stdin)" ;;
    esac
}

# drv_xpath NAME=XPATH...: set shell variable NAME (upper case) to the value
# of XPATH (relative to DS_DRIVER_ACTION_DATA or absolute); missing -> "".
drv_xpath() {
    local -a _dx_names=() _dx_paths=() _dx_vals=()
    local _dx_arg _dx_out _dx_err _dx_i
    for _dx_arg in "$@"; do
        [[ $_dx_arg =~ ^[A-Z_][A-Z0-9_]*=.+$ ]] ||
            fail "Internal error: bad drv_xpath argument $_dx_arg"
        _dx_names+=("${_dx_arg%%=*}")
        _dx_paths+=("${_dx_arg#*=}")
    done
    make_tmp _dx_out
    make_tmp _dx_err
    if ! printf '%s' "$DRV_ACTION" |
        "$DRV_PYTHON" "${DRV_PYTHON_FLAGS[@]}" "$DRV_ACTION_PY" -- "${_dx_paths[@]}" >"$_dx_out" 2>"$_dx_err"; then
        fail "$(err_summary "$_dx_err")"
    fi
    mapfile -d '' -t _dx_vals <"$_dx_out"
    [ "${#_dx_vals[@]}" -eq "${#_dx_paths[@]}" ] || fail "Cannot read driver action data"
    for _dx_i in "${!_dx_names[@]}"; do
        printf -v "${_dx_names[_dx_i]}" '%s' "${_dx_vals[_dx_i]}"
    done
}

# is_yes VALUE: true for yes/YES/Yes/true/1
is_yes() {
    case ${1,,} in yes | true | 1) return 0 ;; *) return 1 ;; esac
}

# ------------------------------------------------------------------ paths --

# norm_path PATH: collapse repeated slashes and drop a trailing one.
norm_path() {
    local p=$1
    while [[ $p == *//* ]]; do p=${p//\/\//\/}; done
    [ "$p" = / ] || p=${p%/}
    printf '%s' "$p"
}

# require_base_path: validate BASE_PATH and create the directory.
require_base_path() {
    [ -n "${BASE_PATH:-}" ] || fail "Datastore BASE_PATH is not set"
    [[ $BASE_PATH == /* ]] || fail "Datastore BASE_PATH must be an absolute path: $BASE_PATH"
    [[ $BASE_PATH != *[[:space:]]* ]] || fail "Datastore BASE_PATH must not contain white space: $BASE_PATH"
    run "Cannot create datastore directory $BASE_PATH" mkdir -p -- "$BASE_PATH"
}

# source_in_base_path: SOURCE must name an entry directly inside BASE_PATH
# (compared after normalising slashes); sets SRC to the normalised SOURCE.
source_in_base_path() {
    local _sb_base _sb_name
    SRC=$(norm_path "${SOURCE:-}")
    _sb_base=$(norm_path "${BASE_PATH:-}")
    _sb_name=${SRC##*/}
    if [ -z "$SRC" ] || [ -z "$_sb_base" ] || [ "$_sb_base" = / ] || [[ $_sb_base != /* ]] ||
        [ "${SRC%/*}" != "$_sb_base" ] || [ "$_sb_name" = . ] || [ "$_sb_name" = .. ]; then
        fail "Bad formed or unavailable Image source '${SOURCE:-}' (not a file directly inside BASE_PATH '${BASE_PATH:-}')"
    fi
}

# new_dst: DST=$BASE_PATH/<md5 of "epoch-ns:id:random">, unused so far.
new_dst() {
    local _nd_h
    while :; do
        _nd_h=$(printf '%s' "$(date +%s%N):${ID}:${RANDOM}" | md5sum)
        DST="$BASE_PATH/${_nd_h%% *}"
        [ -e "$DST" ] || [ -e "$DST.tmp" ] || break
    done
}

# access_error PATH: the reason why PATH can't be read, in ls/stat style.
access_error() {
    if [ ! -e "$1" ] && [ ! -L "$1" ]; then
        printf 'No such file or directory'
    elif [ ! -e "$1" ]; then
        printf 'Dangling symbolic link'
    elif [ ! -r "$1" ]; then
        printf 'Permission denied'
    else
        printf 'Not a regular file'
    fi
}

# ---------------------------------------------------------------- images --

# (external: a file other than the image that qemu would read: a vmdk extent or a
# qcow2 data file, e.g. a descriptor naming /etc/shadow as its FLAT extent)
_PY_QEMU_INFO='import json, os, sys
d = json.load(sys.stdin)
image = os.path.realpath(sys.argv[1])
spec = (d.get("format-specific") or {}).get("data") or {}
refs = [e.get("filename", "") for e in spec.get("extents") or []]
refs.append(spec.get("data-file") or "")
home = os.path.dirname(image)
external = [r for r in refs if r and os.path.realpath(os.path.join(home, r)) != image]
sys.stdout.write("%s\0%s\0%s\0%s\0" % (d.get("format", ""), d.get("virtual-size", ""),
                                       d.get("backing-filename", ""), (external or [""])[0]))'

# image_info FILE: IMG_FORMAT, IMG_VSIZE (bytes), IMG_BACKING, IMG_EXTERNAL
# from qemu-img (format probed: only ever call it on files, never pass the
# result of a probe of an untrusted image to a VM without checking
# IMG_BACKING and IMG_EXTERNAL).
# Returns 1 (with IMG_INFO_ERR) when qemu-img can't read FILE.  Without
# qemu-img the format is found by magic: raw is accepted, anything else
# fails naming the package.
image_info() {
    local _ii_json _ii_err _ii_out
    local -a _ii_vals=() _ii_cmd=(qemu-img info -U --output=json)
    IMG_FORMAT='' IMG_VSIZE='' IMG_BACKING='' IMG_EXTERNAL='' IMG_INFO_ERR=''
    make_tmp _ii_err
    if ! command -v qemu-img >/dev/null 2>&1; then
        make_tmp _ii_out
        "$DRV_PYTHON" "${DRV_PYTHON_FLAGS[@]}" "$IMAGE_SOURCE_PY" probe "$1" >"$_ii_out" 2>"$_ii_err" ||
            fail "$(err_summary "$_ii_err")"
        mapfile -d '' -t _ii_vals <"$_ii_out"
        # shellcheck disable=SC2034  # IMG_BACKING is for the callers
        IMG_FORMAT=${_ii_vals[0]:-} IMG_VSIZE=${_ii_vals[1]:-} IMG_BACKING=${_ii_vals[2]:-}
        return 0
    fi
    # untrusted images: bound qemu-img's memory and CPU time
    if command -v prlimit >/dev/null 2>&1; then
        _ii_cmd=(prlimit --as=2147483648 --cpu=60 -- "${_ii_cmd[@]}")
    fi
    if ! _ii_json=$("${_ii_cmd[@]}" -- "$1" 2>"$_ii_err"); then
        IMG_INFO_ERR=$(err_summary "$_ii_err")
        return 1
    fi
    mapfile -d '' -t _ii_vals < <(printf '%s' "$_ii_json" |
        "$DRV_PYTHON" "${DRV_PYTHON_FLAGS[@]}" -c "$_PY_QEMU_INFO" "$1" 2>/dev/null)
    if [ "${#_ii_vals[@]}" -ne 4 ] || [ -z "${_ii_vals[0]}" ]; then
        # shellcheck disable=SC2034  # IMG_INFO_ERR is for the callers
        IMG_INFO_ERR="cannot parse the output of qemu-img info"
        return 1
    fi
    # shellcheck disable=SC2034  # IMG_BACKING is for the callers
    # shellcheck disable=SC2034  # IMG_EXTERNAL is for the callers
    IMG_FORMAT=${_ii_vals[0]} IMG_VSIZE=${_ii_vals[1]} IMG_BACKING=${_ii_vals[2]} IMG_EXTERNAL=${_ii_vals[3]}
}

# need_qemu_img WHAT: fail unless qemu-img is installed ("... to WHAT").
need_qemu_img() {
    command -v qemu-img >/dev/null 2>&1 ||
        fail "qemu-img is required to $1 (install Debian package qemu-utils)"
}

# snap_paths: check SOURCE and SNAP_ID, set SNAP_DIR/SNAP_PATH (must exist).
snap_paths() {
    [ -n "${SOURCE:-}" ] || fail "Image SOURCE is empty"
    [[ ${SNAP_ID:-} =~ ^[0-9]+$ ]] || fail "Invalid snapshot id '${SNAP_ID:-}'"
    SNAP_DIR="$SOURCE.snap"
    SNAP_PATH="$SNAP_DIR/$SNAP_ID"
    [ -e "$SNAP_PATH" ] || [ -L "$SNAP_PATH" ] ||
        fail "Snapshot $SNAP_ID does not exist ($SNAP_PATH)"
}
