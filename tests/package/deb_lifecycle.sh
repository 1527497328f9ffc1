#!/usr/bin/env bash
# Run by deb_check.sh inside `unshare -m` (a private mount namespace): the package's life with
# the real dpkg and the real maintainer scripts, in a root that is an overlay of / whose writes
# all land in a tmpfs, so the host is never touched. systemctl there is a recorder (the real
# deb-systemd-helper and deb-systemd-invoke run, and call it); /run/systemd/system decides
# whether systemd "runs", as it does for the scripts on a device.
#
# usage (inside the namespace): deb_lifecycle.sh WORK_DIR VERSION
set -euo pipefail

work=$1
version=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }

ov="$work/overlay"
mkdir -p "$ov"
mount -t tmpfs -o size=256m omniedge-deb-check "$ov"
mkdir "$ov/upper" "$ov/work" "$ov/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$ov/upper,workdir=$ov/work" "$ov/root"
r="$ov/root"
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
# A device's own /tmp and /run, not the host's (the overlay shows only the root file system).
mount -t tmpfs tmpfs "$r/tmp"
mount -t tmpfs tmpfs "$r/run"
cp "$work/omniedge.deb" "$r/tmp/omniedge.deb"

# The recorder: logs every call and fakes what needs a running systemd (start, stop, the
# queries deb-systemd-invoke makes); the offline work (deb-systemd-helper's `preset` on a first
# install) goes on to the real systemctl, which only writes links into the root.
log=/var/log/omniedge-systemctl.log
mkdir -p "$r/usr/local/sbin"
cat >"$r/usr/local/sbin/systemctl" <<EOF
#!/bin/sh
echo "\$*" >>$log
case " \$* " in
  *" --version "*) echo "systemd 252 (252)"; exit 0 ;;
  *" is-enabled "*) echo enabled; exit 0 ;;
  *" is-active "* | *" list-units "* | *" daemon-reload "*) exit 0 ;;
  *" start "* | *" stop "* | *" restart "* | *" try-restart "* | *" reload "*) exit 0 ;;
esac
exec /bin/systemctl "\$@"
EOF
chmod 0755 "$r/usr/local/sbin/systemctl"
# A build container's policy-rc.d (exit 101: start nothing) is not what a device has.
rm -f "$r/usr/sbin/policy-rc.d"

in_root() {
  chroot "$r" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
dpkg_do() {
  # stdin closed: a conffile prompt would fail the test instead of waiting.
  if ! in_root dpkg "$@" </dev/null >"$work/dpkg.out" 2>&1; then
    cat "$work/dpkg.out"
    fail "dpkg $* failed"
  fi
}
calls() { cat "$r$log" 2>/dev/null || true; }
reset_calls() { rm -f "$r$log"; }
no_start() {
  if calls | grep -Eq '(^| )(start|restart|try-restart|reload-or-restart)( |$)'; then
    calls
    fail "$1: the service was started without a running systemd"
  fi
}
wants="$r/etc/systemd/system/multi-user.target.wants/omniedge.service"
# A machine that has omniedge installed itself: start from a root without it (in the overlay).
if in_root dpkg-query -W -f='${Status}' omniedge 2>/dev/null | grep -q 'ok installed'; then
  in_root dpkg -P omniedge >/dev/null 2>&1 || true
fi
if in_root getent passwd omniedge >/dev/null; then in_root userdel omniedge; fi
if in_root getent group omniedge >/dev/null; then in_root groupdel omniedge; fi

# ---------------------------------------------------------------------------------------------
step "fresh install, no systemd running (a chroot, an image or container build)"
rm -rf "$r/run/systemd"
reset_calls
dpkg_do -i /tmp/omniedge.deb
no_start "fresh install"
in_root getent passwd omniedge >/dev/null || fail "postinst did not create the user omniedge"
[ "$(in_root stat -c '%U:%G %a' /var/lib/omniedge)" = "omniedge:omniedge 750" ] ||
  fail "/var/lib/omniedge is $(in_root stat -c '%U:%G %a' /var/lib/omniedge)"
[ -d "$r/etc/omniedge" ] || fail "/etc/omniedge is missing"
# deb-systemd-helper links to /lib/systemd/system/ when /lib is the /usr-merged /usr/lib.
[[ "$(readlink "$wants")" =~ ^(/usr)?/lib/systemd/system/omniedge\.service$ ]] ||
  fail "the unit is not enabled (multi-user.target.wants: '$(readlink "$wants" || true)')"
in_root omniedge version | grep -q "$version" || fail "the installed omniedge does not run"
in_root omniedge config validate /etc/omniedge/omniedge.conf >/dev/null ||
  fail "the installed configuration does not validate"
in_root dpkg-query -W -f='${Status}' omniedge | grep -q 'install ok installed' ||
  fail "dpkg does not list omniedge as installed"

# ---------------------------------------------------------------------------------------------
step "the same package again (the upgrade path), no systemd running; admin's edit kept"
echo "# edited by the store's technician" >>"$r/etc/omniedge/omniedge.conf"
echo "buffered events" >"$r/var/lib/omniedge/buffer.db"
in_root chown omniedge:omniedge /var/lib/omniedge/buffer.db
reset_calls
dpkg_do -i /tmp/omniedge.deb
no_start "upgrade"
grep -q "edited by the store's technician" "$r/etc/omniedge/omniedge.conf" ||
  fail "the upgrade overwrote the administrator's configuration (not a conffile?)"
[ -f "$r/var/lib/omniedge/buffer.db" ] || fail "the upgrade lost /var/lib/omniedge/buffer.db"
[ "$(grep -c '^omniedge:' "$r/etc/passwd")" = 1 ] || fail "the upgrade made a second user"

# ---------------------------------------------------------------------------------------------
step "upgrade with systemd running: restarted on the new binary"
mkdir -p "$r/run/systemd/system"
reset_calls
dpkg_do -i /tmp/omniedge.deb
calls | grep -Eq '(^| )restart omniedge\.service$' || { calls; fail "the upgrade did not restart"; }
calls | grep -Eq '(^| )stop omniedge\.service$' && { calls; fail "prerm stopped on an upgrade"; }

# ---------------------------------------------------------------------------------------------
step "remove with systemd running: stopped; configuration and buffer kept"
reset_calls
dpkg_do -r omniedge
calls | grep -Eq '(^| )stop omniedge\.service$' ||
  { calls; fail "remove did not stop the service"; }
[ ! -e "$r/usr/bin/omniedge" ] || fail "remove left /usr/bin/omniedge"
[ -f "$r/etc/omniedge/omniedge.conf" ] || fail "remove deleted the configuration"
[ -f "$r/var/lib/omniedge/buffer.db" ] || fail "remove deleted the buffer"

# ---------------------------------------------------------------------------------------------
step "purge: configuration, state and the unit's links gone; an admin's own file kept"
echo key >"$r/etc/omniedge/tenant.key"
dpkg_do -P omniedge
[ ! -e "$r/var/lib/omniedge" ] || fail "purge left /var/lib/omniedge"
[ ! -e "$r/etc/omniedge/omniedge.conf" ] || fail "purge left /etc/omniedge/omniedge.conf"
[ -f "$r/etc/omniedge/tenant.key" ] || fail "purge deleted a file the administrator added"
[ ! -L "$wants" ] || fail "purge left the unit enabled"
if in_root dpkg-query -W -f='${Status}' omniedge 2>/dev/null | grep -q installed; then
  fail "dpkg still lists omniedge after purge"
fi

# ---------------------------------------------------------------------------------------------
step "fresh install with systemd running: enabled and started"
reset_calls
dpkg_do -i /tmp/omniedge.deb
calls | grep -Eq '(^| )start omniedge\.service$' ||
  { calls; fail "the fresh install did not start"; }
[ -L "$wants" ] || fail "the fresh install did not enable the unit"

# ---------------------------------------------------------------------------------------------
step "a system without systemd-sysusers and systemd-tmpfiles: adduser and mkdir instead"
dpkg_do -P omniedge
in_root userdel omniedge
if in_root getent group omniedge >/dev/null; then in_root groupdel omniedge; fi
rm -f "$r/usr/bin/systemd-sysusers" "$r/usr/bin/systemd-tmpfiles"
rm -rf "$r/run/systemd"
dpkg_do -i /tmp/omniedge.deb
in_root getent passwd omniedge >/dev/null || fail "the adduser fallback did not create the user"
[ "$(in_root stat -c '%U:%G %a' /var/lib/omniedge)" = "omniedge:omniedge 750" ] ||
  fail "fallback: /var/lib/omniedge is $(in_root stat -c '%U:%G %a' /var/lib/omniedge)"
dpkg_do -i /tmp/omniedge.deb
[ "$(grep -c '^omniedge:' "$r/etc/passwd")" = 1 ] || fail "the fallback made a second user"

# ---------------------------------------------------------------------------------------------
step "image bootstrap: dpkg --root with chrootless scripts (DPKG_ROOT) while systemd runs here"
# The scripts act on the image only and never touch the running system's services, even where
# systemd runs (faked for this namespace: a tmpfs over /run with /run/systemd/system).
b="$ov/bootstrap"
mkdir -p "$b/var/lib/dpkg/info" "$b/var/lib/dpkg/updates" "$b/etc"
touch "$b/var/lib/dpkg/status" "$b/var/lib/dpkg/available"
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$b/etc/passwd"
printf 'root:x:0:\n' >"$b/etc/group"
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
mkdir "$ov/bin"
printf '#!/bin/sh\necho "$*" >>%s\nexit 0\n' "$ov/host-systemctl.log" >"$ov/bin/systemctl"
cp "$ov/bin/systemctl" "$ov/bin/deb-systemd-invoke"
chmod 0755 "$ov/bin/systemctl" "$ov/bin/deb-systemd-invoke"
bootstrap_dpkg() {
  if ! PATH="$ov/bin:$PATH" dpkg --root="$b" --force-script-chrootless --force-depends "$@" \
      </dev/null >"$work/dpkg.out" 2>&1; then
    cat "$work/dpkg.out"
    fail "dpkg --root $* failed"
  fi
}
bootstrap_dpkg -i "$work/omniedge.deb"
bootstrap_dpkg -i "$work/omniedge.deb"
[ ! -s "$ov/host-systemctl.log" ] ||
  { cat "$ov/host-systemctl.log"; fail "DPKG_ROOT: the scripts called systemctl on the running system"; }
uid=$(awk -F: '$1 == "omniedge" { print $3 }' "$b/etc/passwd")
[ -n "$uid" ] || fail "DPKG_ROOT: no user omniedge in the image's /etc/passwd"
[ "$(stat -c '%u %a' "$b/var/lib/omniedge")" = "$uid 750" ] ||
  fail "DPKG_ROOT: the image's /var/lib/omniedge is $(stat -c '%u %a' "$b/var/lib/omniedge")"
[ -L "$b/etc/systemd/system/multi-user.target.wants/omniedge.service" ] ||
  fail "DPKG_ROOT: the unit is not enabled in the image"
[ -f "$b/etc/omniedge/omniedge.conf" ] || fail "DPKG_ROOT: no configuration in the image"
bootstrap_dpkg -P omniedge
[ ! -e "$b/var/lib/omniedge" ] && [ ! -e "$b/etc/omniedge/omniedge.conf" ] ||
  fail "DPKG_ROOT: purge left the state or the configuration in the image"
echo "lifecycle: ok"
