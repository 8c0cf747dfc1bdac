#!/bin/bash
# offsite-boot: make the archive instance match its boot config. Runs at every boot.
#
# userdata.py renders EC2 user-data whose cloud-init bootcmd writes the config to
# $OFFSITE_ETC/instance.conf, this script to /usr/local/sbin/offsite-boot, and runs it at every
# boot, once the network is up and before sshd starts (see userdata.py for why bootcmd).
#
# Config, one record per line ('#' starts a comment line):
#   region <aws-region>
#   host_key_parameter <SSM parameter holding the sshd host private key>
#   ca <CA public key line>                 (one or more; several while the CA rotates)
#   host <name> <device> [<uid>]            (a host's backup volume, by the device name of the
#                                            block device mapping: /dev/sd[f-z])
#   restore <name> <device> [<uid>]         (a host's restore volume; a restore archive lists
#                                            only these; the uid is on the host line if any)
#   account_prefix <prefix>                 (optional; the account of host <name> is
#                                            <prefix><name>: chalicelib/accounts.py)
#   api_url <https://...>                   (optional; where the instance says that its boot
#                                            is done: see "Saying ready" below)
#
# For each host: a Unix account named <prefix><name> (the certificate's principal), password
# field "*", shell /bin/sh (sshd runs the certificate's forced rrsync through it), in group
# $OFFSITE_GROUP; its EBS volume, formatted only when blank, mounted at
# $OFFSITE_MOUNT_ROOT/<name>, owned by the account alone (0700). Then sshd: the CA key, one
# principals file per account, the host key from SSM, a drop-in. Running it again changes
# nothing, and it never formats a device that holds anything.
#
# A restore volume (made by the control plane from one of the host's snapshots) is mounted
# read-only (ro,noload) at $OFFSITE_RESTORE_ROOT/<name>: it holds what the host's volume held at
# snapshot time, whose root the host's account alone may read; it is never formatted or chowned.
# A host with a restore volume only (a restore archive) gets its account too, home at the
# restore, with the uid given or else the uid that owns the restore's root (the uid the host's
# account had where the snapshot was made), so that the copy is the account's to read.
#
# Finding a volume. The control plane knows each volume's device name, not its id (the block
# device mapping of RunInstances makes the volumes). On Nitro instances EBS volumes are NVMe
# devices (/dev/nvme<x>n1) numbered in the order they answer, not in mapping order; the device
# name of the mapping is in the vendor-specific data of the NVMe controller identification,
# and Amazon Linux's udev rule (amazon-ec2-utils 70-ec2-nvme-devices.rules, which runs
# `ebsnvme-id -u`) links /dev/sdf to the NVMe device. See the EBS user guide, "Map Amazon EBS
# volumes to NVMe device names", and "Amazon EBS volumes and NVMe" (`nvme id-ctrl -v` shows the
# name at byte 3072 of the identification, the start of the vendor-specific area, bytes
# 3072-4095; "its format can vary depending on whether the EBS volume was attached during or
# after the instance launch": "sdf" or "/dev/sdf", and ebsnvme-id strips "/dev/"). So, for each
# device: the link $OFFSITE_DEV_DIR/sdX (or xvdX) if there is one; else the NVMe device under
# $OFFSITE_DEV_DIR whose vendor data names sdX or xvdX, read with ebsnvme-id -b, or else with
# nvme id-ctrl --raw-binary (checked to be an EBS controller); else wait, up to
# $OFFSITE_DEVICE_WAIT seconds in all. Two device names that lead to one block device are both
# refused. A volume not found leaves its mount point an empty root-owned directory: nothing
# lands on the root disk.
#
# One host's failure does not stop the others; the exit status is 1 if anything failed.
#
# Saying ready (when the config has an api_url). The control plane opens a shard to its hosts
# only when the instance says it is ready (chalicelib/window.py: BOOTING -> OPEN), so hosts
# never meet an sshd that is not up yet or a volume not mounted. A boot whose steps failed
# says `failed`, with the failed steps and the last lines logged, at once, and the shard fails
# with that reason. Otherwise, since bootcmd runs before sshd starts, `offsite-boot
# signal-ready` runs on its own (a transient systemd unit ordered after sshd): it waits, up to
# $OFFSITE_SIGNAL_WAIT seconds, until every volume is mounted and sshd answers on
# $OFFSITE_SSHD_ADDRESS with the provisioned host key (ssh-keyscan), then says `ready` (or
# `failed`, and why). A signal is a small message (chalicelib/boot_signal.py: instance id,
# status, time, nonce, reason) signed with the host key, `ssh-keygen -Y sign -n
# offsite-boot-signal` (OpenSSH >= 8.1), posted with curl to $api_url/v1/archives/<instance
# id>/<status>; a 5xx or a network error is tried again with a fresh nonce. A boot that dies
# before it has the host key cannot sign: the reconciler fails that shard at its boot timeout.
# `offsite-boot signal ready|failed <reason>` sends one signal by hand.
#
# Environment (the defaults are the instance's; tests point them into a sandbox):
#   OFFSITE_ETC              /etc/offsite          config, CA key, principals, host key
#   OFFSITE_CONFIG           $OFFSITE_ETC/instance.conf
#   OFFSITE_SSHD_CONFIG      /etc/ssh/sshd_config  gets an Include of the drop-in dir if missing
#   OFFSITE_SSHD_DROPIN_DIR  /etc/ssh/sshd_config.d
#   OFFSITE_MOUNT_ROOT       /srv/offsite
#   OFFSITE_RESTORE_ROOT     /srv/offsite-restore
#   OFFSITE_DEV_DIR          /dev                  where the sdX links and nvme*n1 devices are
#   OFFSITE_TOOLS            (none)                a directory searched first for tools
#                                                  (ebsnvme-id, nvme): tests put stubs there
#   OFFSITE_GROUP            offsite
#   OFFSITE_RRSYNC           /usr/bin/rrsync       the path certificates' force-command runs
#   OFFSITE_DOC_DIR          /usr/share/doc        where packages' documentation is installed
#   OFFSITE_DEVICE_WAIT      60                    seconds, in all, to wait for volumes
#   OFFSITE_HOST_KEY_COMMAND sh command printing the host private key; $1 = parameter, $2 =
#                            region; default: aws ssm get-parameter --with-decryption
#   OFFSITE_SSHD_RELOAD      sh command run when sshd's files changed; default: reload
#                            ssh.service or sshd.service if it is running
#   OFFSITE_INSTANCE_ID      (none)                the instance id; default: from IMDSv2
#   OFFSITE_SSHD_ADDRESS     127.0.0.1             where the ready check asks sshd for its key
#   OFFSITE_SSHD_PORT        22
#   OFFSITE_SIGNAL_WAIT      600                   seconds the ready check waits for sshd
#   OFFSITE_SIGNAL_TRIES     20                    posts of one signal, at most (~8 min)
#   OFFSITE_SIGNAL_START     sh command that starts `$1 signal-ready` ($1: this script) on its
#                            own; default: systemd-run, ordered after sshd
set -euo pipefail
shopt -s nullglob
umask 022
PATH=${OFFSITE_TOOLS:+$OFFSITE_TOOLS:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

ETC=${OFFSITE_ETC:-/etc/offsite}
CONFIG=${OFFSITE_CONFIG:-$ETC/instance.conf}
SSHD_CONFIG=${OFFSITE_SSHD_CONFIG:-/etc/ssh/sshd_config}
DROPIN_DIR=${OFFSITE_SSHD_DROPIN_DIR:-/etc/ssh/sshd_config.d}
MOUNT_ROOT=${OFFSITE_MOUNT_ROOT:-/srv/offsite}
RESTORE_ROOT=${OFFSITE_RESTORE_ROOT:-/srv/offsite-restore}
DEV_DIR=${OFFSITE_DEV_DIR:-/dev}
GROUP=${OFFSITE_GROUP:-offsite}
RRSYNC=${OFFSITE_RRSYNC:-/usr/bin/rrsync}
DOC_DIR=${OFFSITE_DOC_DIR:-/usr/share/doc}
DEVICE_WAIT=${OFFSITE_DEVICE_WAIT:-60}
SSHD_ADDRESS=${OFFSITE_SSHD_ADDRESS:-127.0.0.1}
SSHD_PORT=${OFFSITE_SSHD_PORT:-22}
SIGNAL_WAIT=${OFFSITE_SIGNAL_WAIT:-600}
SIGNAL_TRIES=${OFFSITE_SIGNAL_TRIES:-20}
SELF=$(readlink -f "$0")
# shellcheck disable=SC2016  # $1 and $2 are expanded by the sh that runs the command
FETCH_FROM_SSM='aws ssm get-parameter --with-decryption --name "$1" --region "$2"'
FETCH_FROM_SSM+=' --query Parameter.Value --output text'
HOST_KEY_COMMAND=${OFFSITE_HOST_KEY_COMMAND:-$FETCH_FROM_SSM}

HOST_KEY=$ETC/ssh_host_key
CA_KEYS=$ETC/ca.pub
PRINCIPALS_DIR=$ETC/principals
DROPIN=$DROPIN_DIR/00-offsite.conf # sshd keeps the first value: read before 50-redhat.conf & co
EBS_MODEL='Amazon Elastic Block Store' # the NVMe controller's model number on EBS
NAME_RE='^[a-z0-9][a-z0-9-]{0,31}$'
ACCOUNT_PREFIX_RE='^([a-z][a-z0-9-]{0,15})?$'
DEVICE_RE='^/dev/sd[f-z]$' # chalicelib/names.py DEVICE_NAME

REGION=
HOST_KEY_PARAMETER=
ACCOUNT_PREFIX=
API_URL=
SCRATCH=
CA_LINES=()
HOST_NAMES=() RESTORE_NAMES=()
# HOST_DEVICE, RESTORE_DEVICE: host -> device name; VOLUME_OF: device name -> "<kind> <host>";
# FOUND: device name -> the path found for it (see find_devices)
declare -A HOST_DEVICE=() RESTORE_DEVICE=() HOST_UID=() VOLUME_OF=() FOUND=()
FAILED=() WHY=()

# Logged lines also go to $SCRATCH/log: a failed boot's signal quotes the last ones.
log() {
  printf 'offsite-boot: %s\n' "$*" >&2
  [[ -z $SCRATCH ]] || printf '%s\n' "$*" >>"$SCRATCH/log"
}
die() { log "error: $*"; exit 1; }

read_config() {
  local kind rest name
  [[ -r $CONFIG ]] || die "cannot read $CONFIG"
  while read -r kind rest || [[ -n $kind ]]; do
    case $kind in
      '' | '#'*) ;;
      region) REGION=$rest ;;
      host_key_parameter) HOST_KEY_PARAMETER=$rest ;;
      ca) CA_LINES+=("$rest") ;;
      account_prefix)
        [[ $rest =~ $ACCOUNT_PREFIX_RE ]] || die "bad account prefix: $rest"
        ACCOUNT_PREFIX=$rest
        ;;
      api_url)
        [[ $rest =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)*$ ]] ||
          die "bad api_url: $rest"
        API_URL=$rest
        ;;
      host | restore) add_volume "$kind" "$rest" ;;
      *) die "unknown record in $CONFIG: $kind" ;;
    esac
  done <"$CONFIG"
  [[ $REGION =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "bad or missing region"
  [[ $HOST_KEY_PARAMETER =~ ^[A-Za-z0-9_./-]+$ ]] || die "bad or missing host_key_parameter"
  ((${#CA_LINES[@]} > 0)) || die "no ca line"
  for name in "${HOST_NAMES[@]}" "${RESTORE_NAMES[@]}"; do
    ((${#ACCOUNT_PREFIX} + ${#name} <= 32)) || die "account $ACCOUNT_PREFIX$name is too long"
  done
  local path
  for path in "$ETC" "$SSHD_CONFIG" "$DROPIN_DIR" "$MOUNT_ROOT" "$RESTORE_ROOT" "$RRSYNC" \
    "$DEV_DIR"; do
    [[ $path =~ ^/[A-Za-z0-9_./-]+$ ]] || die "unusable path (absolute, no spaces): $path"
  done
}

# A `host` or `restore` record ($1) with its fields ($2).
add_volume() {
  local kind=$1 name device uid extra
  read -r name device uid extra <<<"$2"
  [[ $name =~ $NAME_RE && ! $name =~ ^[0-9]+$ ]] || die "bad $kind name: $name"
  [[ $device =~ $DEVICE_RE ]] || die "bad device for $kind $name: $device"
  [[ -z $uid || ($uid =~ ^[1-9][0-9]{3,4}$ && $uid -le 65533) ]] ||
    die "bad uid for $name: $uid"
  [[ -z $extra ]] || die "trailing fields on $kind $name"
  [[ -z ${VOLUME_OF[$device]-} ]] || die "device $device listed twice"
  VOLUME_OF[$device]="$kind $name"
  if [[ $kind == host ]]; then
    [[ -z ${HOST_DEVICE[$name]-} ]] || die "host $name listed twice"
    HOST_NAMES+=("$name")
    HOST_DEVICE[$name]=$device
  else
    [[ -z ${RESTORE_DEVICE[$name]-} ]] || die "restore $name listed twice"
    RESTORE_NAMES+=("$name")
    RESTORE_DEVICE[$name]=$device
  fi
  if [[ -n $uid ]]; then
    [[ -z ${HOST_UID[$name]-} ]] || die "two uids for $name"
    HOST_UID[$name]=$uid
  fi
}

# Fill FOUND: the path each configured device name leads to (see "Finding a volume" above).
# Runs before the steps, once for all devices: one NVMe scan a second, whatever their number.
find_devices() {
  while :; do
    find_pass
    ((MISSING == 0)) && break
    (($(date +%s) < DEVICE_DEADLINE)) || break
    sleep 1
  done
  refuse_shared_devices
}

# One look for the devices not found yet; sets MISSING to how many are still missing. (The
# scan's lines come through a here-string, not a pipe: a pipe's loop would fill a copy of FOUND.)
find_pass() {
  local device link name path
  MISSING=0
  for device in "${!VOLUME_OF[@]}"; do
    [[ -n ${FOUND[$device]-} ]] && continue
    for link in "$DEV_DIR/${device#/dev/}" "$DEV_DIR/xvd${device#/dev/sd}"; do
      if [[ -e $link ]]; then
        FOUND[$device]=$link
        break
      fi
    done
    [[ -n ${FOUND[$device]-} ]] || MISSING=$((MISSING + 1))
  done
  if ((MISSING > 0)); then
    while read -r name path; do
      [[ -n $name && -n ${VOLUME_OF[$name]-} && -z ${FOUND[$name]-} ]] || continue
      FOUND[$name]=$path
      log "$name is $path (its NVMe controller names it)"
      MISSING=$((MISSING - 1))
    done <<<"$(scan_nvme)"
  fi
}

# "<device name> <path>" for each EBS NVMe device under $DEV_DIR whose vendor data names one.
scan_nvme() {
  local path name
  for path in "$DEV_DIR"/nvme*n1; do
    [[ -b $path ]] || continue
    name=$(mapping_name "$path") || continue
    printf '%s %s\n' "$name" "$path"
  done
}

# The device name of the block device mapping that NVMe device $1 stands for, as /dev/sdX:
# its vendor data holds "sdf", "/dev/sdf" or "xvdf", space- or NUL-padded.
mapping_name() {
  local raw
  if command -v ebsnvme-id >/dev/null; then
    raw=$(ebsnvme-id -b "$1" 2>/dev/null) || return 1
  elif command -v nvme >/dev/null; then
    raw=$(nvme_vendor_name "$1") || return 1
  else
    return 1
  fi
  raw=${raw//[[:space:]]/}
  raw=${raw#/dev/}
  [[ $raw =~ ^(sd|xvd)([f-z])$ ]] || return 1
  printf '/dev/sd%s\n' "${BASH_REMATCH[2]}"
}

# nvme-cli's identify controller, raw (nvme-id-ctrl(1): "-b, --raw-binary  Print the raw buffer
# to stdout", 4096 bytes, in nvme-cli 0.5 to 2.x): model number at bytes 24-63, the vendor's
# block device name at 3072-3103 (amazon-ec2-utils ebsnvme-id's nvme_identify_controller).
nvme_vendor_name() {
  local identify model
  identify=$(mktemp "$SCRATCH/id-ctrl.XXXXXX")
  nvme id-ctrl --raw-binary "$1" >"$identify" 2>/dev/null || { rm -f "$identify"; return 1; }
  model=$(head -c 64 "$identify" | tail -c 40 | tr -d '\0') # head reads no more: no SIGPIPE
  if [[ ${model%"${model##*[! ]}"} != "$EBS_MODEL" ]]; then
    rm -f "$identify"
    return 1
  fi
  head -c 3104 "$identify" | tail -c 32 | tr -d '\0'
  rm -f "$identify"
}

# Two device names leading to one block device: something is wrong; neither is used.
refuse_shared_devices() {
  local device real
  local -A first=() shared=()
  for device in "${!FOUND[@]}"; do
    real=$(readlink -f "${FOUND[$device]}")
    if [[ -n ${first[$real]-} ]]; then
      log "error: $device and ${first[$real]} both lead to $real: using neither"
      shared[$device]=1
      shared[${first[$real]}]=1
    else
      first[$real]=$device
    fi
  done
  for device in "${!shared[@]}"; do
    unset "FOUND[$device]"
  done
}

# Run "$@" in a subshell with errexit on; record a failure instead of stopping the other steps.
# (errexit is ignored in a function called from a condition, hence no `if ! "$@"`.)
# WHY: what each failed step logged last, the reason a failed boot signals.
step() {
  local rc logged
  logged=$(logged_lines)
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  if ((rc != 0)); then
    FAILED+=("$*")
    if (($(logged_lines) > logged)); then WHY+=("$(tail -n 1 "$SCRATCH/log")"); fi
    log "error: step failed ($rc): $*"
  fi
}

logged_lines() {
  if [[ -f $SCRATCH/log ]]; then wc -l <"$SCRATCH/log"; else echo 0; fi
}

# Write stdin to $1 with mode $2, root-owned, replacing the file (atomically) only when the
# content differs. The comparison copy goes to $SCRATCH, so an unchanged file's directory is
# not touched either.
put_file() {
  local dest=$1 mode=$2 compare tmp
  compare=$(mktemp "$SCRATCH/put.XXXXXX")
  cat >"$compare"
  if ! [[ -f $dest ]] || ! cmp -s "$compare" "$dest"; then
    tmp=$(mktemp "$dest.XXXXXX")
    cat "$compare" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
    log "wrote $dest"
  fi
  rm -f "$compare"
  ensure_attrs "$dest" 0:0 "$mode"
}

ensure_attrs() {
  local path=$1 owner=$2 mode=$3
  [[ $(stat -c %u:%g "$path") == "$owner" ]] || chown -h "$owner" "$path"
  [[ $(stat -c %a "$path") == "${mode#0}" ]] || chmod "$mode" "$path"
}

ensure_dir() {
  [[ -d $1 ]] || mkdir -p "$1"
  ensure_attrs "$1" 0:0 "$2"
}

ensure_group() {
  getent group "$GROUP" >/dev/null || groupadd "$GROUP"
}

# rsync and rrsync. On Amazon Linux 2023 one package gives both: its package list has `rsync`
# and `rsync-daemon` (both built from the rsync 3.2.6 source) and no `rsync-rrsync` (a later
# Fedora split): "All packages" in Release-Notes-Amazon-Linux-2023.1.20230809.md and
# al2023-support-statements/support_info.xml at github.com/amazonlinux/amazon-linux-2023. There
# rrsync is among the package's documentation files ($DOC_DIR/rsync*/support/rrsync), which
# an image installed without docs (dnf's tsflags=nodocs) leaves out: then the same package is
# installed again with docs. Debian's rsync puts it at /usr/bin/rrsync, older ones gzipped
# under scripts/. rrsync is a Python script (rsync 3.2.4 on): without the interpreter its
# first line names, every certificate's forced command fails, so boot fails here instead.
ensure_rrsync() {
  command -v rsync >/dev/null || install_rsync
  if [[ ! -x $RRSYNC ]]; then
    if ! copy_rrsync_from_docs; then
      reinstall_rsync_with_docs
      copy_rrsync_from_docs || {
        log "no rrsync: not at $RRSYNC, nor among the rsync package's documentation" \
          "($DOC_DIR/rsync*/support/rrsync*, $DOC_DIR/rsync*/scripts/rrsync*)"
        return 1
      }
    fi
  fi
  check_rrsync_interpreter
}

install_rsync() {
  if command -v dnf >/dev/null; then
    dnf -y install rsync
  elif command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y rsync
  fi
}

# tsflags is dnf's list of rpm transaction flags (dnf.conf(5)); set empty, it drops nodocs.
reinstall_rsync_with_docs() {
  command -v dnf >/dev/null || return 0
  dnf -y --setopt=tsflags= reinstall rsync || log "reinstalling rsync with its docs failed"
}

copy_rrsync_from_docs() {
  local source
  for source in "$DOC_DIR"/rsync*/support/rrsync* "$DOC_DIR"/rsync*/scripts/rrsync*; do
    mkdir -p "${RRSYNC%/*}"
    case $source in
      *.gz) gzip -dc "$source" | put_file "$RRSYNC" 0755 ;;
      *) put_file "$RRSYNC" 0755 <"$source" ;;
    esac
    return 0
  done
  return 1
}

check_rrsync_interpreter() {
  local shebang interpreter words=()
  IFS= read -r shebang <"$RRSYNC" || true
  [[ $shebang == '#!'* ]] || return 0
  read -r -a words <<<"${shebang#??}"
  interpreter=${words[0]-}
  if [[ ${interpreter##*/} == env ]]; then
    interpreter=${words[1]-}
  fi
  if ! command -v "$interpreter" >/dev/null; then
    log "rrsync ($RRSYNC) is a script run by '$interpreter', which this image lacks:" \
      "install python3 (dnf -y install python3)"
    return 1
  fi
}

# The host private key lives in SSM Parameter Store, readable by the instance role only; it is
# never logged, and a fetch that fails or does not parse keeps the installed key.
install_host_key() {
  local key_text candidate
  ensure_dir "$ETC" 0755
  key_text=$(sh -c "$HOST_KEY_COMMAND" offsite-host-key "$HOST_KEY_PARAMETER" "$REGION")
  candidate=$(mktemp "$SCRATCH/host_key.XXXXXX") # 0600
  printf '%s\n' "$key_text" >"$candidate"
  if ! ssh-keygen -y -P '' -f "$candidate" >"$candidate.pub"; then
    rm -f "$candidate" "$candidate.pub"
    log "the fetched host key is not an unencrypted OpenSSH private key"
    return 1
  fi
  put_file "$HOST_KEY" 0600 <"$candidate"
  put_file "$HOST_KEY.pub" 0644 <"$candidate.pub"
  rm -f "$candidate" "$candidate.pub"
}

install_ca_keys() {
  ensure_dir "$ETC" 0755
  printf '%s\n' "${CA_LINES[@]}" | put_file "$CA_KEYS" 0644
  ssh-keygen -l -f "$CA_KEYS" >/dev/null
}

setup_host() {
  local name=$1 account=$ACCOUNT_PREFIX$1
  ensure_account "$account" "${HOST_UID[$name]-}" "$MOUNT_ROOT/$name"
  ensure_principals "$account"
  mount_volume "$name" "${HOST_DEVICE[$name]}"
}

# A restore-only host's account takes the uid of the restore's root unless the config gives one.
setup_restore() {
  local name=$1 account=$ACCOUNT_PREFIX$1 mnt=$RESTORE_ROOT/$1 uid
  mount_restore "$name" "${RESTORE_DEVICE[$name]}"
  if [[ -z ${HOST_DEVICE[$name]-} ]]; then
    uid=${HOST_UID[$name]-}
    [[ -n $uid ]] || uid=$(restore_owner "$name" "$mnt")
    ensure_account "$account" "$uid" "$mnt"
    ensure_principals "$account"
  fi
  [[ $(stat -c %u "$mnt") == "$(id -u "$account")" ]] ||
    log "$name: the restore's root belongs to uid $(stat -c %u "$mnt"), not the account"
}

ensure_principals() {
  ensure_dir "$PRINCIPALS_DIR" 0755
  printf '%s\n' "$1" | put_file "$PRINCIPALS_DIR/$1" 0644
}

# The uid that owns the restore's root, if the host's account may take it: an Offsite uid
# (1000-65533) that no other account has. Prints nothing for a system uid (useradd chooses).
restore_owner() {
  local name=$1 mnt=$2 uid owner
  uid=$(stat -c %u "$mnt")
  if ((uid < 1000 || uid > 65533)); then
    log "$name: the restore's root belongs to uid $uid: not an account's to take"
    return 0
  fi
  if owner=$(getent passwd "$uid"); then
    [[ ${owner%%:*} == "$ACCOUNT_PREFIX$name" ]] ||
      { log "$name: uid $uid, owner of the restore's root, is ${owner%%:*}'s"; return 1; }
  fi
  printf '%s\n' "$uid"
}

# The account is named as the host, after the prefix. An existing account outside $GROUP is a
# system account (root, daemon, ec2-user, ...) that happens to share the name: never adopt it.
ensure_account() {
  local name=$1 uid=$2 home=$3 entry password
  if entry=$(getent passwd "$name"); then
    id -nG "$name" | tr ' ' '\n' | grep -qxF "$GROUP" ||
      { log "$name: an account outside group $GROUP already has this name"; return 1; }
    [[ -z $uid || $(id -u "$name") == "$uid" ]] ||
      { log "$name: account has uid $(id -u "$name"), config says $uid"; return 1; }
    [[ $entry == *":$home:/bin/sh" ]] || usermod -d "$home" -s /bin/sh "$name"
  else
    useradd -M -d "$home" -s /bin/sh -U -G "$GROUP" ${uid:+-u "$uid"} \
      -c "Offsite host $name" -p '*' "$name"
    log "$name: account created"
  fi
  # "*", not useradd's locking "!": with UsePAM no, sshd refuses "!" accounts even with a
  # certificate. Neither can match any password.
  password=$(getent shadow "$name" | cut -d: -f2)
  [[ $password == '*' ]] || usermod -p '*' "$name"
}

# The block device that device name $2 (of host $1) leads to, or why there is none.
attached() {
  local name=$1 device=$2 path
  [[ -n ${FOUND[$device]-} ]] ||
    { log "$name: $device is not attached (no $DEV_DIR/${device#/dev/}, no NVMe device names it)"
      return 1; }
  path=$(readlink -f "${FOUND[$device]}")
  [[ -b $path ]] || { log "$name: ${FOUND[$device]} does not lead to a block device"; return 1; }
  printf '%s\n' "$path"
}

# The device must be this mount point's, or nobody's yet (then $1's directory is made).
free_or_mounted_here() {
  local name=$1 device=$2 path=$3 mnt=$4 source
  if mountpoint -q "$mnt"; then
    source=$(findmnt -rno SOURCE --mountpoint "$mnt")
    [[ $(readlink -f "$source") == "$path" ]] ||
      { log "$name: $mnt holds $source, not $device ($path)"; return 1; }
    return 0
  fi
  if source=$(findmnt -rno TARGET --source "$path"); then
    log "$name: $device ($path) is already mounted at $source"
    return 1
  fi
}

mount_volume() {
  local name=$1 device=$2 mnt=$MOUNT_ROOT/$1 path
  path=$(attached "$name" "$device")
  ensure_dir "$MOUNT_ROOT" 0755
  free_or_mounted_here "$name" "$device" "$path" "$mnt"
  if ! mountpoint -q "$mnt"; then
    # Unmounted, the directory is root's: if the volume is missing, nothing lands on the root disk.
    ensure_dir "$mnt" 0755
    ensure_filesystem "$name" "$device" "$path"
    mount -o nodev,nosuid,noexec,noatime "$path" "$mnt"
    log "$name: $device mounted at $mnt"
  fi
  own_volume "$ACCOUNT_PREFIX$name" "$mnt"
}

# Read-only, never formatted, never chowned: the copy is what the snapshot holds. noload: no
# journal replay on a read-only mount.
mount_restore() {
  local name=$1 device=$2 mnt=$RESTORE_ROOT/$1 path
  path=$(attached "$name" "$device")
  ensure_dir "$RESTORE_ROOT" 0755
  free_or_mounted_here "$name" "$device" "$path" "$mnt"
  mountpoint -q "$mnt" && return 0
  ensure_dir "$mnt" 0755
  mount -o ro,noload,nodev,nosuid,noexec,noatime "$path" "$mnt"
  log "$name: restore $device mounted read-only at $mnt"
}

# Format only a blank device: blkid's low-level probe finds no filesystem, RAID member or
# partition table, and the first MiB reads as zeros (blkid also answers "nothing" when it could
# not read the device, so the zero check keeps an unreadable or unrecognised volume unformatted).
ensure_filesystem() {
  local name=$1 device=$2 path=$3 probe rc=0
  probe=$(blkid -p -o export "$path") || rc=$?
  if ((rc == 0)); then
    grep -q '^TYPE=' <<<"$probe" ||
      { log "$name: $device holds no filesystem but: ${probe//$'\n'/ }"; return 1; }
    return 0
  fi
  ((rc == 2)) || { log "$name: blkid -p failed on $path ($rc)"; return 1; }
  cmp -s -n 1048576 "$path" /dev/zero ||
    { log "$name: $device is not blank but has no known filesystem: not formatting"; return 1; }
  mkfs.ext4 -q -m 0 -L "${name:0:16}" "$path"
  log "$name: formatted $device (ext4)"
}

# The volume's root belongs to the account alone. Files of another uid came from an earlier
# account of this host (the instance was rebuilt): they become the current account's.
own_volume() {
  local name=$1 mnt=$2 uid gid previous # name: the account
  uid=$(id -u "$name")
  gid=$(id -g "$name")
  previous=$(stat -c %u "$mnt")
  if [[ $previous != 0 && $previous != "$uid" ]]; then
    log "$name: files of uid $previous become $uid"
    find "$mnt" -xdev -uid "$previous" -exec chown -h "$uid:$gid" {} +
  fi
  ensure_attrs "$mnt" "$uid:$gid" 0700
}

# Principals files of hosts no longer configured go: their certificates stop working.
prune_principals() {
  local path account name
  for path in "$PRINCIPALS_DIR"/*; do
    account=${path##*/}
    name=${account#"$ACCOUNT_PREFIX"}
    [[ $account == "$ACCOUNT_PREFIX"* &&
      -n ${HOST_DEVICE[$name]-}${RESTORE_DEVICE[$name]-} ]] && continue
    rm -f "$path"
    log "removed $path"
  done
}

dropin() {
  cat <<EOF
# Offsite archive instance: written by offsite-boot at every boot; edits are overwritten.
# Logins are certificates from the Offsite CA only, each valid for the one account whose
# principals file names it; the certificate's force-command runs rrsync on that host's volume.
HostKey $HOST_KEY
TrustedUserCAKeys $CA_KEYS
AuthorizedPrincipalsFile $PRINCIPALS_DIR/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowAgentForwarding no
AllowTcpForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
GatewayPorts no
# The key id of each accepted certificate (host, window, request) goes to the log.
LogLevel VERBOSE
# Hundreds of hosts may connect in the first minutes of a window.
MaxStartups 100:30:300

Match Group $GROUP
    AuthenticationMethods publickey
    AuthorizedKeysFile none
    PermitTTY no
    PermitUserRC no
    DisableForwarding yes
EOF
}

# The drop-in must be included by the main config, early: sshd keeps the first value it reads.
includes_dropin() {
  awk -v abs="$DROPIN_DIR/*.conf" -v rel="${DROPIN_DIR#/etc/ssh/}/*.conf" '
    tolower($1) == "include" { for (i = 2; i <= NF; i++) if ($i == abs || $i == rel) found = 1 }
    END { exit !found }' "$SSHD_CONFIG"
}

configure_sshd() {
  local candidate backup
  [[ -d /run/sshd ]] || mkdir -m 0755 /run/sshd # privilege separation dir, needed by sshd -t
  ensure_dir "$DROPIN_DIR" 0755
  candidate=$(mktemp "$SCRATCH/dropin.XXXXXX")
  dropin >"$candidate"
  sshd -t -f "$candidate" || { rm -f "$candidate"; return 1; }
  backup=$(mktemp "$SCRATCH/backup.XXXXXX")
  [[ -f $DROPIN ]] && cp -p "$DROPIN" "$backup"
  put_file "$DROPIN" 0644 <"$candidate"
  rm -f "$candidate"
  if ! includes_dropin; then
    { printf 'Include %s/*.conf\n' "$DROPIN_DIR" && cat "$SSHD_CONFIG"; } |
      put_file "$SSHD_CONFIG" "$(stat -c %a "$SSHD_CONFIG")"
  fi
  if ! sshd -t -f "$SSHD_CONFIG"; then
    log "sshd rejects $SSHD_CONFIG with the drop-in: restoring the previous drop-in"
    if [[ -s $backup ]]; then cp -p "$backup" "$DROPIN"; else rm -f "$DROPIN"; fi
    rm -f "$backup"
    return 1
  fi
  rm -f "$backup"
}

sshd_state() {
  local path
  for path in "$SSHD_CONFIG" "$DROPIN" "$HOST_KEY" "$CA_KEYS"; do
    if [[ -f $path ]]; then cksum <"$path"; else echo "no $path"; fi
  done
}

reload_sshd() {
  if [[ -n ${OFFSITE_SSHD_RELOAD-} ]]; then
    sh -c "$OFFSITE_SSHD_RELOAD"
    return
  fi
  command -v systemctl >/dev/null || return 0
  local unit
  for unit in ssh.service sshd.service; do
    if systemctl is-active --quiet "$unit"; then
      systemctl reload "$unit"
      log "reloaded $unit"
      return
    fi
  done
}

# --- saying ready -------------------------------------------------------------------------
# Why the instance is not ready yet (on stdout, status 1), or nothing (status 0).
readiness() {
  local name want got
  for name in "${HOST_NAMES[@]}"; do
    mountpoint -q "$MOUNT_ROOT/$name" || { echo "$MOUNT_ROOT/$name is not mounted"; return 1; }
  done
  for name in "${RESTORE_NAMES[@]}"; do
    mountpoint -q "$RESTORE_ROOT/$name" ||
      { echo "$RESTORE_ROOT/$name is not mounted"; return 1; }
  done
  [[ -s $HOST_KEY.pub ]] || { echo "no host key installed"; return 1; }
  want=$(cut -d' ' -f1,2 "$HOST_KEY.pub")
  got=$(ssh-keyscan -T 3 -p "$SSHD_PORT" -t "${want%% *}" "$SSHD_ADDRESS" 2>/dev/null |
    cut -d' ' -f2,3) || true
  [[ -n $got ]] || { echo "sshd does not answer on $SSHD_ADDRESS port $SSHD_PORT"; return 1; }
  grep -qxF "$want" <<<"$got" || { echo "sshd answers with another host key"; return 1; }
}

signal_when_ready() {
  local deadline why
  deadline=$(($(date +%s) + SIGNAL_WAIT))
  until why=$(readiness); do
    if (($(date +%s) >= deadline)); then
      send_signal failed "not ready ${SIGNAL_WAIT} s after boot: $why"
      return 1
    fi
    sleep 2
  done
  send_signal ready "${#HOST_NAMES[@]} volume(s) and ${#RESTORE_NAMES[@]} restore(s) mounted; \
sshd answers with the host key"
}

# The instance id, from the instance metadata service, version 2 (the launch template requires
# tokens): a session token from PUT /latest/api/token with the X-aws-ec2-metadata-token-ttl-
# seconds header, then GET /latest/meta-data/instance-id with it in X-aws-ec2-metadata-token
# (EC2 user guide, "Access instance metadata for an EC2 instance",
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html).
instance_id() {
  local token
  if [[ -n ${OFFSITE_INSTANCE_ID-} ]]; then
    printf '%s\n' "$OFFSITE_INSTANCE_ID"
    return
  fi
  token=$(curl -fsS --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
    http://169.254.169.254/latest/api/token)
  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" \
    http://169.254.169.254/latest/meta-data/instance-id
}

# Post signal $1 (ready|failed) with reason $2, signed with the host key (format: the header
# of chalicelib/boot_signal.py). Returns 0 once the control plane accepted it.
send_signal() {
  local status=$1 reason instance attempt=0 message code
  reason=$(printf '%s' "$2" | tr -c ' -~' ' ' | cut -c1-900)
  instance=$(instance_id) || { log "error: no instance id: the $status signal is not sent"; return 1; }
  [[ $instance =~ ^i-[0-9a-f]{8,17}$ ]] || { log "error: not an instance id: $instance"; return 1; }
  [[ -s $HOST_KEY ]] || { log "error: no host key to sign the $status signal with"; return 1; }
  while :; do
    message=$(mktemp "$SCRATCH/signal.XXXXXX")
    printf 'offsite-boot-signal 1\ninstance %s\nstatus %s\ntime %s\nnonce %s\nreason %s\n' \
      "$instance" "$status" "$(date +%s)" "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" \
      "$reason" >"$message"
    ssh-keygen -Y sign -f "$HOST_KEY" -n offsite-boot-signal "$message" 2>/dev/null ||
      { log "error: ssh-keygen -Y sign failed: the $status signal is not sent"; return 1; }
    printf '{"message": "%s", "signature": "%s"}' "$(base64 -w0 <"$message")" \
      "$(base64 -w0 <"$message.sig")" >"$message.json"
    code=$(curl -sS --max-time 20 -o "$message.answer" -w '%{http_code}' -X POST \
      -H 'Content-Type: application/json' --data-binary "@$message.json" \
      "$API_URL/v1/archives/$instance/$status") || code=000
    case $code in
      2??) log "the control plane accepted the $status signal"; return 0 ;;
      4??) log "error: the control plane refused the $status signal ($code): \
$(head -c 300 "$message.answer")"; return 1 ;;
    esac
    attempt=$((attempt + 1))
    ((attempt < SIGNAL_TRIES)) || { log "error: the $status signal was not delivered ($code)"; return 1; }
    sleep $((attempt * 2 < 30 ? attempt * 2 : 30))
  done
}

# signal-ready runs on its own, after sshd: bootcmd runs before sshd starts.
start_ready_signal() {
  if [[ -n ${OFFSITE_SIGNAL_START-} ]]; then
    sh -c "$OFFSITE_SIGNAL_START" offsite-signal "$SELF"
  elif [[ -d /run/systemd/system ]] && command -v systemd-run >/dev/null; then
    systemd-run --no-block --collect --unit="offsite-boot-signal-$(date +%s)" \
      --property=After=sshd.service --property=After=ssh.service /bin/bash "$SELF" signal-ready
  else
    setsid /bin/bash "$SELF" signal-ready </dev/null >>"$ETC/signal.log" 2>&1 &
  fi
}

# `offsite-boot signal-ready` and `offsite-boot signal <status> <reason>`.
signal_main() {
  read_config
  [[ -n $API_URL ]] || die "no api_url in $CONFIG: nobody to tell"
  SCRATCH=$(mktemp -d)
  trap 'rm -rf "$SCRATCH"' EXIT
  if [[ $1 == signal-ready ]]; then
    signal_when_ready
  else
    [[ $2 == ready || $2 == failed ]] || die "usage: offsite-boot signal ready|failed <reason>"
    send_signal "$2" "${3-}"
  fi
}

main() {
  local before name reason
  read_config
  ensure_dir "$ETC" 0755
  exec 9>>"$ETC/.lock"
  flock -w 600 9 || die "another offsite-boot holds $ETC/.lock"
  SCRATCH=$(mktemp -d)
  trap 'rm -rf "$SCRATCH"' EXIT
  DEVICE_DEADLINE=$(($(date +%s) + DEVICE_WAIT))
  find_devices
  before=$(sshd_state)
  step ensure_group
  step ensure_rrsync
  step install_host_key
  step install_ca_keys
  for name in "${HOST_NAMES[@]}"; do
    step setup_host "$name"
  done
  for name in "${RESTORE_NAMES[@]}"; do
    step setup_restore "$name"
  done
  step prune_principals
  step configure_sshd
  if [[ $(sshd_state) != "$before" ]]; then
    step reload_sshd
  fi
  if ((${#FAILED[@]} > 0)); then
    reason="${#FAILED[@]} step(s) failed: $(printf '[%s] ' "${FAILED[@]}")"
    ((${#WHY[@]} == 0)) || reason+="$(printf '; %s' "${WHY[@]}")"
    [[ -z $API_URL ]] || send_signal failed "$reason" || true
    die "$reason"
  fi
  log "done: ${#HOST_NAMES[@]} host(s), ${#RESTORE_NAMES[@]} restore(s)"
  if [[ -n $API_URL ]]; then
    start_ready_signal || die "the ready signal did not start"
  fi
}

case ${1-} in
  signal-ready | signal) signal_main "$@" ;;
  *) main "$@" ;;
esac
