# shellcheck shell=bash
# ---------------------------------------------------------------------------
# tm_common.sh - the oned-images transfer-manager (TM) scripts' library.
# Sourced (never executed) by drivers/tm/<TM_MAD>/<action>; each action script
# is a few lines that call one tm_<action> function here.  The logging,
# failure, clean-up and qemu-img helpers are the datastore drivers'
# (../../datastore/common/libfs.sh), so both kinds of driver behave alike.
#
# Calling contract (OpenNebula 7.0's one_tm.rb, vms.md section 7): every
# argument on argv, nothing on stdin; exit 0 on success; on failure exit 1
# with the error text as ONE plain line on stderr (INFO:/ERROR: lines are log
# lines).  "host:path" arguments name a path on a host; the host is this
# machine (image and system datastores on one file system), so the host part
# is not used.  argv per action (dsid: image datastore for clone, ln, mvds,
# cpds and snap_*, system datastore for mkimage, mkswap, context and the
# VM directory's delete):
#   clone|ln    fe:SOURCE host:<sysdir>/disk.<n> vmid dsid
#   clone       fe:SOURCE host:<sysdir>/kernel|initrd vmid dsid (a files
#               datastore's KERNEL/RAMDISK image: always a plain copy)
#   mvds        host:<sysdir>/disk.<n> SOURCE vmid dsid
#   cpds        host:<sysdir>/disk.<n> SOURCE snapid|-1 vmid dsid
#   delete      host:<sysdir>[/disk.<n>] vmid dsid
#   mv          host:<sysdir>[/disk.<n>] host:<sysdir>[/disk.<n>] vmid dsid
#   mkimage     size_mb format host:<sysdir>/disk.<n> vmid dsid
#   mkswap      size_mb host:<sysdir>/disk.<n> vmid dsid
#   context     file[:name]... host:<sysdir>/disk.<n> vmid dsid
#   snap_create|snap_revert|snap_delete  host:<sysdir>/disk.<n> snapid vmid dsid
#   resize      host:<sysdir>/disk.<n> size_mb vmid dsid
# where <sysdir> = $ONED_DATASTORE_LOCATION/<system ds id>/<vmid>.
#
# Environment (set by the daemon, oned_images/driver/tm.py):
#   ONED_DATASTORE_LOCATION  DATASTORE_LOCATION; every path an action reads or
#                            writes must stay inside it (checked on the text
#                            and on the real path of its directory)
#   ONED_VMS_LOCATION        where the daemon writes a VM's context files
#                            (context: sources may come from <it>/<vmid>/ or
#                            from the datastores, nowhere else)
#   ONED_DISK_FS             optional file system for mkimage (ext2|3|4, xfs)
#
# Layouts (what the datastore driver's snap_* scripts expect, drivers.md 4.9):
#   * a persistent image is used in place: disk.<n> is a symbolic link to the
#     image SOURCE (raw) or to the newest numeric layer of SOURCE.snap (qcow2).
#   * raw disks: snapshot <s> is a full copy <disk>.snap/<s>, where <disk> is
#     the file disk.<n> links to (SOURCE for a persistent image), and the disk
#     itself is the current state.
#   * qcow2 disks: a chain in a <disk>.snap directory.  Snapshot <s> is the
#     file <s> (0 may be a link to SOURCE), each file backed by the previous
#     one through its absolute path; the newest numeric file is the active
#     layer and disk.<n> links to it.
#   * shared clones are copies (disk.<n> a file); qcow2 clones are qcow2
#     overlays backed by SOURCE.
# Files are written under a .tmp name and renamed when complete; a failure or
# TERM removes the partial file.
#
# Error texts (beginning of the line):
#   all      ONED_DATASTORE_LOCATION is not set | Bad path argument '<arg>'
#            Invalid VM id '<id>' | Wrong number of arguments (...)
#            Not allowed to use <path>: <why>       (outside the datastores)
#   clone,ln Cannot read image <path> (No such file or directory|...)
#            Image has a backing file (<file>), refusing it
#            Error copying image <src> to <dst>: <tool error>
#   snap_*   Invalid snapshot id '<id>' | Snapshot <s> does not exist (<path>)
#            Snapshot <s> already exists (<path>) | Disk <path> does not exist
#            Cannot revert to snapshot <s>: it is the active disk state
#            Cannot delete snapshot <s>: it has more than one child
#   mkimage  Invalid image size '<size>' | Unsupported image format <fmt>
#   context  Not allowed to use context file <path>: <why> (only image files
#            directly in a datastore directory and <ONED_VMS_LOCATION>/<vmid>/ files)
#            Cannot build the context ISO: <tool error>
# ---------------------------------------------------------------------------

# shellcheck source=../../datastore/common/libfs.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../../datastore/common/libfs.sh"

DS_LOCATION=
DS_LOCATION_REAL=
# the real directories datastores live in: DS_LOCATION's, and those of datastore
# directories that are symbolic links (an operator's datastores/0 -> /mnt/big/0)
TM_ROOTS=()

# tm_location: DS_LOCATION (normalised) and DS_LOCATION_REAL from the environment.
tm_location() {
    local loc=${ONED_DATASTORE_LOCATION:-}
    [ -n "$loc" ] || fail "ONED_DATASTORE_LOCATION is not set (the daemon sets it for TM actions)"
    [[ $loc == /* ]] || fail "ONED_DATASTORE_LOCATION must be an absolute path: $loc"
    DS_LOCATION=$(norm_path "$loc")
    [ "$DS_LOCATION" != / ] || fail "ONED_DATASTORE_LOCATION must not be /"
    DS_LOCATION_REAL=$(realpath -m -- "$DS_LOCATION")
    TM_ROOTS=("$DS_LOCATION_REAL")
    local d
    for d in "$DS_LOCATION"/*; do
        if [[ ${d##*/} =~ ^[0-9]+$ ]] && [ -L "$d" ]; then
            TM_ROOTS+=("$(realpath -m -- "$d")")
        fi
    done
}

# tm_args N "$@": fail unless exactly N arguments were given.
tm_args() {
    local want=$1
    shift
    [ "$#" -eq "$want" ] ||
        fail "Wrong number of arguments ($# given, $want expected): $SCRIPT_NAME $*"
}

# tm_vmid ID: check a VM id; sets VMID.
tm_vmid() {
    [[ $1 =~ ^[0-9]+$ ]] || fail "Invalid VM id '$1'"
    VMID=$1
}

# tm_arg_path VAR ARG: the path of a "host:/path" argument (an absolute path is
# taken whole), normalised; no "." or ".." components, no white space.
tm_arg_path() {
    local _ap=$2
    if [[ $_ap != /* ]]; then
        [[ $_ap == *:/* ]] || fail "Bad path argument '$2' (expected host:/absolute/path)"
        _ap=${_ap#*:}
    fi
    if [[ /$_ap/ == */../* || /$_ap/ == */./* || $_ap == *[[:space:][:cntrl:]]* ]]; then
        fail "Bad path argument '$2'"
    fi
    printf -v "$1" '%s' "$(norm_path "$_ap")"
}

# tm_real_under PATH ROOT...: fail unless the real path of PATH's directory is one
# of the ROOTs or below it (symbolic links in the directories are followed).
tm_real_under() {
    local dir root path=$1
    shift
    dir=$(realpath -m -- "${path%/*}")
    for root in "$@"; do
        case $dir/ in "$root"/*) return 0 ;; esac
    done
    fail "Not allowed to use $path: its directory resolves to $dir, outside $*"
}

# tm_in_datastores PATH: tm_real_under the datastores' real directories.
tm_in_datastores() {
    tm_real_under "$1" "${TM_ROOTS[@]}"
}

# tm_sys_path VAR ARG [SYS_DS]: ARG must name <DS_LOCATION>/<system ds>/<VMID>
# (KIND=dir), <...>/<VMID>/disk.<n> (KIND=disk) or <...>/<VMID>/kernel|initrd
# (KIND=os); sets VAR, KIND, SYS_DS_ID, VM_DIR, DISK_ID (disk only).  With SYS_DS
# the system datastore must be it.
tm_sys_path() {
    local _sp _rest=
    tm_arg_path _sp "$2"
    [[ $_sp != "$DS_LOCATION"/* ]] || _rest=${_sp#"$DS_LOCATION"/}
    if [[ $_rest =~ ^([0-9]+)/([0-9]+)(/disk\.([0-9]+)|/kernel|/initrd)?$ ]] &&
        [ "${BASH_REMATCH[2]}" = "$VMID" ]; then
        SYS_DS_ID=${BASH_REMATCH[1]}
        # shellcheck disable=SC2034  # DISK_ID is for the actions
        DISK_ID=${BASH_REMATCH[4]}
        if [ -n "$DISK_ID" ]; then KIND=disk
        elif [ -n "${BASH_REMATCH[3]}" ]; then KIND=os
        else KIND=dir; fi
    else
        fail "Not allowed to use $_sp: not a directory or disk of VM $VMID in a system datastore of $DS_LOCATION"
    fi
    if [ -n "${3:-}" ] && [ "$SYS_DS_ID" != "$3" ]; then
        fail "Not allowed to use $_sp: not in system datastore $3"
    fi
    VM_DIR="$DS_LOCATION/$SYS_DS_ID/$VMID"
    local real_ds real_vm
    real_ds=$(realpath -m -- "$DS_LOCATION/$SYS_DS_ID")
    real_vm=$(realpath -m -- "$VM_DIR")
    [ "$real_vm" = "$real_ds/$VMID" ] ||
        fail "Not allowed to use $_sp: $VM_DIR resolves to $real_vm"
    printf -v "$1" '%s' "$_sp"
}

# tm_disk_arg ARG [SYS_DS]: ARG must name a disk of VM VMID; sets DISK_PATH.
tm_disk_arg() {
    tm_sys_path DISK_PATH "$1" "${2:-}"
    [ "$KIND" = disk ] || fail "Not allowed to use $DISK_PATH: not a disk (<dir>/disk.<n>)"
}

# tm_image_arg VAR ARG DSID: ARG must name a file directly inside
# <DS_LOCATION>/<DSID> (an image SOURCE) that is not a symbolic link.
tm_image_arg() {
    local _ia _base
    [[ $3 =~ ^[0-9]+$ ]] || fail "Invalid datastore id '$3'"
    tm_arg_path _ia "$2"
    _base="$DS_LOCATION/$3"
    if [ "${_ia%/*}" != "$_base" ] || [ -z "${_ia##*/}" ]; then
        fail "Not allowed to use $_ia: not an image of datastore $3 ($_base)"
    fi
    tm_real_under "$_ia" "$(realpath -m -- "$_base")"
    [ ! -L "$_ia" ] || fail "Not allowed to use $_ia: it is a symbolic link"
    printf -v "$1" '%s' "$_ia"
}

# tm_image_file REAL: true when the real path REAL is a file directly inside a
# datastore directory (<DS_LOCATION>/<id>/<name>, or a symlinked datastore's).
tm_image_file() {
    local root rest
    for root in "${TM_ROOTS[@]}"; do
        [[ $1 == "$root"/* ]] || continue
        rest=${1#"$root"/}
        if [ "$root" = "$DS_LOCATION_REAL" ]; then
            [[ $rest =~ ^[0-9]+/[^/]+$ ]] && return 0
        else
            [[ $rest != */* ]] && return 0
        fi
    done
    return 1
}

# tm_snap_id ID: check a snapshot id; sets SNAP_ID.
tm_snap_id() {
    [[ $1 =~ ^[0-9]{1,9}$ ]] || fail "Invalid snapshot id '$1'"
    SNAP_ID=$((10#$1))
}

# tm_size SIZE: a size in MiB > 0; sets SIZE.
tm_size() {
    if ! [[ $1 =~ ^[0-9]{1,12}$ ]] || [ "$((10#$1))" -eq 0 ]; then
        fail "Invalid image size '$1'"
    fi
    SIZE=$((10#$1))
}

# tm_readable_image PATH: PATH must be a readable regular image file with no
# backing or external file; sets IMG_FORMAT (and the other image_info values).
tm_readable_image() {
    if [ ! -f "$1" ] || [ ! -r "$1" ]; then
        fail "Cannot read image $1 ($(access_error "$1"))"
    fi
    image_info "$1" || fail "Cannot read image $1: $IMG_INFO_ERR"
    [ -z "$IMG_BACKING" ] || fail "Image has a backing file ($IMG_BACKING), refusing it"
    [ -z "$IMG_EXTERNAL" ] || fail "Image refers to another file ($IMG_EXTERNAL), refusing it"
}

# tm_link VAR LINK: the target of symbolic link LINK, absolute.
tm_link() {
    local _lt
    _lt=$(readlink -- "$2") || fail "Cannot read link $2"
    [[ $_lt == /* ]] || _lt="${2%/*}/$_lt"
    printf -v "$1" '%s' "$(norm_path "$_lt")"
}

# tm_newest_layer VAR DIR: the largest numeric entry of DIR ("" if none).
tm_newest_layer() {
    local _nl=
    if [ -d "$2" ]; then
        _nl=$(find "$2" -mindepth 1 -maxdepth 1 -regex '.*/[0-9]+' -printf '%f\n' |
            sort -n | tail -n 1)
    fi
    printf -v "$1" '%s' "$_nl"
}

# tm_absent PATH TEXT: fail with "TEXT (PATH)" if PATH exists (a dangling link too).
tm_absent() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        fail "$2 ($1)"
    fi
}

# tm_swap_link LINK TARGET: make LINK point to TARGET atomically.
tm_swap_link() {
    run "Cannot link $1 to $2" ln -sfn -- "$2" "$1.tmp"
    run "Cannot link $1 to $2" mv -Tf -- "$1.tmp" "$1"
}

# tm_disk_state: what DISK_PATH is.  Sets
#   DISK_LINK   the file DISK_PATH names (its link target, one level), or DISK_PATH
#   DISK_REAL   the file holding the data (all links followed)
#   DISK_FORMAT qemu-img's format of DISK_REAL
#   CHAIN       yes when DISK_LINK is a numeric layer of a *.snap directory (qcow2)
#   SNAP_DIR    the chain's directory, or <DISK_LINK>.snap (raw full copies)
tm_disk_state() {
    if [ ! -e "$DISK_PATH" ]; then
        fail "Disk $DISK_PATH does not exist"
    fi
    DISK_LINK=$DISK_PATH
    [ ! -L "$DISK_PATH" ] || tm_link DISK_LINK "$DISK_PATH"
    tm_in_datastores "$DISK_LINK"
    DISK_REAL=$(realpath -e -- "$DISK_PATH")
    tm_in_datastores "$DISK_REAL"
    image_info "$DISK_REAL" || fail "Cannot read disk $DISK_PATH: $IMG_INFO_ERR"
    DISK_FORMAT=$IMG_FORMAT
    local dir=${DISK_LINK%/*} name=${DISK_LINK##*/}
    if [ "$DISK_FORMAT" = qcow2 ] && [[ $dir == *.snap ]] && [[ $name =~ ^[0-9]+$ ]]; then
        CHAIN=yes
        SNAP_DIR=$dir
    else
        CHAIN=no
        SNAP_DIR="$DISK_LINK.snap"
    fi
}

# tm_chain_absolute DIR: give every layer of DIR whose backing file name is
# relative (the datastore driver's snap_revert writes "<id>") its absolute
# name: a VM opens the chain through disk.<n>, from another directory.
tm_chain_absolute() {
    local layer
    while IFS= read -r layer; do
        if [ ! -f "$1/$layer" ] || [ -L "$1/$layer" ]; then continue; fi
        image_info "$1/$layer" || fail "Cannot read snapshot $1/$layer: $IMG_INFO_ERR"
        if [ -n "$IMG_BACKING" ] && [[ $IMG_BACKING != /* ]]; then
            run "Cannot rebase $1/$layer" qemu-img rebase -q -u -f qcow2 -F qcow2 \
                -b "$1/$IMG_BACKING" -- "$1/$layer"
        fi
    done < <(find "$1" -mindepth 1 -maxdepth 1 -regex '.*/[0-9]+' -printf '%f\n')
}

# tm_copy "error text" SRC DST: copy the file SRC (raw data) to the new file DST
# as fast as this file system allows: a reflink where it shares blocks (btrfs,
# XFS), else the kernel copies the data (copy_file_range: no byte passes through
# user space and none is scanned for zeros, which cost a dense 1 GiB disk 3-6 s
# with --sparse=always); holes of a sparse SRC stay holes (cp finds them with
# SEEK_HOLE).  Then one fdatasync, so that the rename that publishes DST (the
# callers write DST as <name>.tmp) never publishes a file whose data is still
# only in the page cache.
tm_copy() {
    run "$1" cp --reflink=auto --sparse=auto -- "$2" "$3"
    run "$1" sync --data -- "$3"
}

# tm_copy_image FORMAT "error text" SRC DST: a disk's data into the new file DST
# in FORMAT: a qcow2 disk (maybe the top of a backing chain) is written out whole
# by qemu-img convert, which follows the chain, so DST stands alone; anything else
# is copied with tm_copy.  DST is synced either way before the caller renames it.
tm_copy_image() {
    if [ "$1" = qcow2 ]; then
        run "$2" qemu-img convert -q -f qcow2 -O qcow2 -- "$3" "$4"
        run "$2" sync --data -- "$4"
    else
        tm_copy "$2" "$3" "$4"
    fi
}

# ---------------------------------------------------------------- actions --

# clone: copy (shared) or qcow2 overlay (qcow2) of the image as disk.<n>; a
# kernel or initrd file (PROLOG of a VM with OS/KERNEL_DS, INITRD_DS) is copied.
tm_clone() {
    local how=$1 src dst
    shift
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_image_arg src "$1" "$4"
    tm_sys_path dst "$2"
    case $KIND in
        disk) ;;
        os) how=copy ;;
        *) fail "Not allowed to use $dst: not a disk (<dir>/disk.<n>) nor <dir>/kernel|initrd" ;;
    esac
    tm_readable_image "$src"
    run "Cannot create directory $VM_DIR" mkdir -p -- "$VM_DIR"
    cleanup_on_fail "$dst.tmp"
    if [ "$how" = overlay ]; then
        need_qemu_img "create qcow2 overlays"
        log_info "Creating qcow2 overlay $dst on $src ($IMG_FORMAT)"
        run "Error copying image $src to $dst" qemu-img create -q -f qcow2 \
            -F "$IMG_FORMAT" -b "$src" -- "$dst.tmp"
    else
        log_info "Copying $src to $dst"
        tm_copy "Error copying image $src to $dst" "$src" "$dst.tmp"
    fi
    run "Error copying image $src to $dst" mv -f -- "$dst.tmp" "$dst"
    run "Error copying image $src to $dst" rm -rf -- "$dst.snap"
}

# ln: disk.<n> links to the image (to the active layer of a qcow2 chain).
tm_ln() {
    local src target active
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_image_arg src "$1" "$4"
    tm_disk_arg "$2"
    tm_readable_image "$src"
    target=$src
    tm_newest_layer active "$src.snap"
    if [ "$IMG_FORMAT" = qcow2 ] && [ -n "$active" ]; then
        tm_chain_absolute "$src.snap"
        target="$src.snap/$active"
    fi
    run "Cannot create directory $VM_DIR" mkdir -p -- "$VM_DIR"
    log_info "Linking $DISK_PATH to $target"
    run "Error linking $src" rm -rf -- "$DISK_PATH.snap"
    tm_swap_link "$DISK_PATH" "$target"
}

# mvds: keep a persistent disk's changes in the image SOURCE.
tm_mvds() {
    local dst target
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_disk_arg "$1"
    tm_image_arg dst "$2" "$4"
    if [ ! -e "$DISK_PATH" ] && [ ! -L "$DISK_PATH" ]; then
        fail "Disk $DISK_PATH does not exist"
    fi
    if [ -L "$DISK_PATH" ]; then
        tm_link target "$DISK_PATH"
        case $target in
            "$dst" | "$dst.snap/"*)
                log_info "$DISK_PATH is the image $dst itself, nothing to move"
                run "Cannot remove $DISK_PATH" rm -f -- "$DISK_PATH"
                return 0
                ;;
        esac
        tm_disk_state
        cleanup_on_fail "$dst.tmp"
        log_info "Saving $DISK_PATH ($DISK_FORMAT) into $dst"
        tm_copy_image "$DISK_FORMAT" "Could not move image $dst" "$DISK_REAL" "$dst.tmp"
        run "Could not move image $dst" mv -f -- "$dst.tmp" "$dst"
        run "Could not move image $dst" rm -rf -- "$DISK_PATH" "$DISK_PATH.snap"
        return 0
    fi
    cleanup_on_fail "$dst.tmp"
    log_info "Moving $DISK_PATH to $dst"
    run "Could not move image $dst" mv -f -- "$DISK_PATH" "$dst.tmp"
    run "Could not move image $dst" mv -f -- "$dst.tmp" "$dst"
}

# cpds: copy the disk (or its snapshot) into a new image SOURCE (save-as).
tm_cpds() {
    local dst file snap
    tm_args 5 "$@"
    snap=$3
    tm_location
    tm_vmid "$4"
    tm_disk_arg "$1"
    tm_image_arg dst "$2" "$5"
    tm_disk_state
    file=$DISK_REAL
    if [ "$snap" != -1 ]; then
        tm_snap_id "$snap"
        file="$SNAP_DIR/$SNAP_ID"
        [ -e "$file" ] || fail "Snapshot $SNAP_ID does not exist ($file)"
        tm_in_datastores "$file"
        image_info "$file" || fail "Cannot read snapshot $file: $IMG_INFO_ERR"
    fi
    cleanup_on_fail "$dst.tmp"
    log_info "Copying $file ($IMG_FORMAT) to $dst"
    tm_copy_image "$IMG_FORMAT" "Could not copy $file to $dst" "$file" "$dst.tmp"
    run "Could not copy $file to $dst" mv -f -- "$dst.tmp" "$dst"
}

# delete: remove disk.<n> (never what it links to) or the whole VM directory.
tm_delete() {
    local path
    tm_args 3 "$@"
    tm_location
    tm_vmid "$2"
    [[ $3 =~ ^[0-9]+$ ]] || fail "Invalid datastore id '$3'"
    tm_sys_path path "$1"
    if [ "$KIND" = dir ]; then
        [ "$SYS_DS_ID" = "$3" ] || fail "Not allowed to use $path: not in system datastore $3"
        log_info "Deleting $path"
        run "Error deleting $path" rm -rf -- "$path"
    else
        log_info "Deleting $path"
        run "Error deleting $path" rm -rf -- "$path" "$path.snap" "$path.tmp"
    fi
}

# mv: move a disk or VM directory between system datastore paths (the same
# path on this machine: nothing to do).
tm_mv() {
    local src dst
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_sys_path src "$1"
    local kind=$KIND
    tm_sys_path dst "$2"
    [ "$kind" = "$KIND" ] || fail "Cannot move $src to $dst: not the same kind of path"
    if [ "$src" = "$dst" ]; then
        log_info "$src stays where it is"
        return 0
    fi
    [ -e "$src" ] || [ -L "$src" ] || fail "Cannot move $src: it does not exist"
    run "Cannot create directory ${dst%/*}" mkdir -p -- "${dst%/*}"
    log_info "Moving $src to $dst"
    run "Error moving $src to $dst" rm -rf -- "$dst"
    run "Error moving $src to $dst" mv -f -- "$src" "$dst"
    [ "$kind" = dir ] || [ ! -e "$src.snap" ] ||
        run "Error moving $src to $dst" mv -f -- "$src.snap" "$dst.snap"
}

# mkimage: an empty volatile disk (raw, qcow2 or swap; FS from ONED_DISK_FS).
tm_mkimage() {
    local fmt fs=${ONED_DISK_FS:-} dst
    tm_args 5 "$@"
    fmt=${2,,}
    tm_location
    tm_vmid "$4"
    tm_size "$1"
    tm_disk_arg "$3" "$5"
    dst=$DISK_PATH
    case $fmt in raw | qcow2 | swap) ;; *) fail "Unsupported image format $2" ;; esac
    fs=${fs,,}
    [ "$fmt" != swap ] || fs=
    case $fs in "" | ext2 | ext3 | ext4 | xfs) ;; *) fail "Unsupported file system type $fs" ;; esac
    run "Cannot create directory $VM_DIR" mkdir -p -- "$VM_DIR"
    cleanup_on_fail "$dst.tmp" "$dst.tmp.conv"
    log_info "Creating ${SIZE}M $fmt disk $dst${fs:+ with a $fs file system}"
    if [ "$fmt" = qcow2 ] && [ -z "$fs" ]; then
        need_qemu_img "create qcow2 images"
        run "Could not create image $dst" qemu-img create -q -f qcow2 -- "$dst.tmp" "${SIZE}M"
    else
        run "Could not create image $dst" truncate -s "${SIZE}M" -- "$dst.tmp"
        case $fs in
            "") ;;
            xfs) run "Could not create image $dst" mkfs.xfs -f -q -- "$dst.tmp" ;;
            *) run "Could not create image $dst" mkfs -t "$fs" -F -q -- "$dst.tmp" ;;
        esac
        [ "$fmt" != swap ] || run "Could not create image $dst" mkswap -- "$dst.tmp"
        if [ "$fmt" = qcow2 ]; then
            need_qemu_img "create qcow2 images"
            run "Could not create image $dst" qemu-img convert -q -f raw -O qcow2 -- \
                "$dst.tmp" "$dst.tmp.conv"
            run "Could not create image $dst" mv -f -- "$dst.tmp.conv" "$dst.tmp"
        fi
    fi
    run "Could not create image $dst" mv -f -- "$dst.tmp" "$dst"
}

# mkswap: a raw swap disk.
tm_mkswap() {
    tm_args 4 "$@"
    tm_mkimage "$1" swap "$2" "$3" "$4"
}

# context: an ISO 9660 image (label CONTEXT) of the files, as disk.<n>.
tm_context() {
    [ "$#" -ge 4 ] || fail "Wrong number of arguments ($# given, at least 4 expected)"
    local -a args=("$@") files tool
    local n=$# dst iso_dir f name real vms
    files=("${args[@]:0:n-3}")
    tm_location
    tm_vmid "${args[n-2]}"
    tm_disk_arg "${args[n-3]}" "${args[n-1]}"
    dst=$DISK_PATH
    vms=${ONED_VMS_LOCATION:-}
    [ -z "$vms" ] || vms=$(realpath -m -- "$vms/$VMID")
    if command -v genisoimage >/dev/null 2>&1; then tool=(genisoimage)
    elif command -v xorriso >/dev/null 2>&1; then tool=(xorriso -as mkisofs)
    elif command -v mkisofs >/dev/null 2>&1; then tool=(mkisofs)
    else fail "Cannot build the context ISO: genisoimage is missing (install Debian package genisoimage)"
    fi
    iso_dir=$(mktemp -d "${TMPDIR:-/tmp}/one-context-XXXXXXXX") ||
        fail "Cannot create a temporary directory in ${TMPDIR:-/tmp}"
    _CLEAN_ALWAYS+=("$iso_dir")
    for f in "${files[@]}"; do
        name=
        if [[ $f == *:* ]]; then
            name=${f#*:}
            name=${name//[\/ ]/_}
            f=${f%%:*}
        fi
        [[ $f == /* ]] || fail "Not allowed to use context file $f: not an absolute path"
        [ -z "$name" ] || [[ $name != . && $name != .. ]] ||
            fail "Not allowed to use context file name '$name'"
        real=$(realpath -e -- "$f" 2>/dev/null) ||
            fail "Not allowed to use context file $f: $(access_error "$f")"
        # an image file (directly inside a datastore directory) or the VM's own files
        if ! tm_image_file "$real" && { [ -z "$vms" ] || [[ $real != "$vms"/* ]]; }; then
            fail "Not allowed to use context file $f: not an image file of a datastore nor in the VM's directory"
        fi
        if [ ! -f "$real" ] || [ ! -r "$real" ]; then
            fail "Not allowed to use context file $f: $(access_error "$real")"
        fi
        run "Error copying $f to the context ISO" cp -- "$real" "$iso_dir/${name:-${f##*/}}"
    done
    run "Cannot create directory $VM_DIR" mkdir -p -- "$VM_DIR"
    cleanup_on_fail "$dst.tmp"
    log_info "Generating context ISO $dst (${#files[@]} files)"
    run "Cannot build the context ISO" "${tool[@]}" -quiet -o "$dst.tmp" -V CONTEXT -J -R \
        -- "$iso_dir"
    run "Cannot build the context ISO" mv -f -- "$dst.tmp" "$dst"
}

# chain_init: make a qcow2 disk a chain whose active layer is named SNAP_ID
# (a cloned file moves into disk.<n>.snap; an image gets <SOURCE>.snap/<id>
# linking to SOURCE), so that snapshot <id> is the file <id>.
tm_chain_init() {
    local newest
    if [ "$CHAIN" = yes ]; then
        [ "${DISK_LINK##*/}" = "$SNAP_ID" ] && return 0
        tm_absent "$SNAP_DIR/$SNAP_ID" "Snapshot $SNAP_ID already exists"
        # the active layer is the top of the chain: nothing is backed by it
        run "Error creating snapshot $SNAP_ID" mv -f -- "$DISK_LINK" "$SNAP_DIR/$SNAP_ID"
    elif [ -L "$DISK_PATH" ]; then
        tm_newest_layer newest "$SNAP_DIR"
        [ -z "$newest" ] || fail "Disk $DISK_PATH links to $DISK_LINK but $SNAP_DIR holds snapshots"
        run "Error creating snapshot $SNAP_ID" mkdir -p -- "$SNAP_DIR"
        run "Error creating snapshot $SNAP_ID" ln -s -- "$DISK_LINK" "$SNAP_DIR/$SNAP_ID"
    else
        run "Error creating snapshot $SNAP_ID" rm -rf -- "$SNAP_DIR"
        run "Error creating snapshot $SNAP_ID" mkdir -p -- "$SNAP_DIR"
        run "Error creating snapshot $SNAP_ID" mv -f -- "$DISK_PATH" "$SNAP_DIR/$SNAP_ID"
    fi
    tm_swap_link "$DISK_PATH" "$SNAP_DIR/$SNAP_ID"
    CHAIN=yes
    DISK_LINK="$SNAP_DIR/$SNAP_ID"
}

tm_snap_create() {
    local next
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_disk_arg "$1"
    tm_snap_id "$2"
    tm_disk_state
    if [ "$DISK_FORMAT" = qcow2 ]; then
        need_qemu_img "take qcow2 snapshots"
        tm_chain_init
        next="$SNAP_DIR/$((SNAP_ID + 1))"
        tm_absent "$next" "Snapshot file already exists"
        cleanup_on_fail "$next.tmp"
        log_info "Snapshot $SNAP_ID of $DISK_PATH is $SNAP_DIR/$SNAP_ID, new active layer $next"
        run "Error creating snapshot $SNAP_ID" qemu-img create -q -f qcow2 -F qcow2 \
            -b "$SNAP_DIR/$SNAP_ID" -- "$next.tmp"
        run "Error creating snapshot $SNAP_ID" mv -f -- "$next.tmp" "$next"
        tm_swap_link "$DISK_PATH" "$next"
    else
        local snap="$SNAP_DIR/$SNAP_ID"
        tm_absent "$snap" "Snapshot $SNAP_ID already exists"
        run "Error creating snapshot $SNAP_ID" mkdir -p -- "$SNAP_DIR"
        cleanup_on_fail "$snap.tmp"
        log_info "Copying $DISK_REAL to snapshot $snap"
        tm_copy "Error creating snapshot $SNAP_ID" "$DISK_REAL" "$snap.tmp"
        run "Error creating snapshot $SNAP_ID" mv -f -- "$snap.tmp" "$snap"
    fi
}

tm_snap_revert() {
    local snap
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_disk_arg "$1"
    tm_snap_id "$2"
    tm_disk_state
    snap="$SNAP_DIR/$SNAP_ID"
    [ -e "$snap" ] || fail "Snapshot $SNAP_ID does not exist ($snap)"
    if [ "$CHAIN" = yes ]; then
        [ "$DISK_LINK" != "$snap" ] ||
            fail "Cannot revert to snapshot $SNAP_ID: it is the active disk state"
        cleanup_on_fail "$DISK_LINK.tmp"
        log_info "Reverting $DISK_PATH to snapshot $SNAP_ID (new active layer $DISK_LINK)"
        run "Error reverting snapshot $SNAP_ID" qemu-img create -q -f qcow2 -F qcow2 \
            -b "$snap" -- "$DISK_LINK.tmp"
        run "Error reverting snapshot $SNAP_ID" mv -f -- "$DISK_LINK.tmp" "$DISK_LINK"
    else
        cleanup_on_fail "$DISK_REAL.tmp"
        log_info "Reverting $DISK_PATH to snapshot $SNAP_ID"
        tm_copy "Error reverting snapshot $SNAP_ID" "$snap" "$DISK_REAL.tmp"
        run "Error reverting snapshot $SNAP_ID" mv -f -- "$DISK_REAL.tmp" "$DISK_REAL"
    fi
}

tm_snap_delete() {
    local snap layer base="" children=() fmt=qcow2
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_disk_arg "$1"
    tm_snap_id "$2"
    tm_disk_state
    snap="$SNAP_DIR/$SNAP_ID"
    [ -e "$snap" ] || [ -L "$snap" ] || fail "Snapshot $SNAP_ID does not exist ($snap)"
    if [ "$CHAIN" = yes ]; then
        [ "$DISK_LINK" != "$snap" ] ||
            fail "Cannot delete snapshot $SNAP_ID: it is the active disk state"
        [ ! -L "$snap" ] || fail "Cannot delete snapshot $SNAP_ID: it is the image itself"
        image_info "$snap" || fail "Cannot read snapshot $snap: $IMG_INFO_ERR"
        base=$IMG_BACKING
        [ -z "$base" ] || [[ $base == /* ]] || base="$SNAP_DIR/$base"
        if [ -n "$base" ]; then
            image_info "$base" || fail "Cannot read $base: $IMG_INFO_ERR"
            fmt=$IMG_FORMAT
        fi
        while IFS= read -r layer; do
            if [ ! -f "$SNAP_DIR/$layer" ] || [ -L "$SNAP_DIR/$layer" ]; then continue; fi
            image_info "$SNAP_DIR/$layer" || continue
            local bf=$IMG_BACKING
            [ -z "$bf" ] || [[ $bf == /* ]] || bf="$SNAP_DIR/$bf"
            [ "$(norm_path "$bf")" != "$snap" ] || children+=("$SNAP_DIR/$layer")
        done < <(find "$SNAP_DIR" -mindepth 1 -maxdepth 1 -regex '.*/[0-9]+' -printf '%f\n')
        [ "${#children[@]}" -le 1 ] ||
            fail "Cannot delete snapshot $SNAP_ID: it has more than one child"
        if [ "${#children[@]}" -eq 1 ]; then
            log_info "Rebasing ${children[0]} on ${base:-nothing} before deleting $snap"
            if [ -n "$base" ]; then
                run "Error deleting snapshot $SNAP_ID" qemu-img rebase -q -f qcow2 \
                    -F "$fmt" -b "$base" -- "${children[0]}"
            else
                run "Error deleting snapshot $SNAP_ID" qemu-img rebase -q -f qcow2 \
                    -b "" -- "${children[0]}"
            fi
        fi
    fi
    log_info "Deleting snapshot $snap"
    run "Error deleting snapshot $SNAP_ID" rm -f -- "$snap"
}

tm_resize() {
    tm_args 4 "$@"
    tm_location
    tm_vmid "$3"
    tm_disk_arg "$1"
    tm_size "$2"
    tm_disk_state
    need_qemu_img "resize disks"
    log_info "Resizing $DISK_PATH ($DISK_REAL) to ${SIZE}M"
    run "Error resizing image $DISK_PATH" qemu-img resize -q -f "$DISK_FORMAT" -- \
        "$DISK_REAL" "${SIZE}M"
}
