#!/usr/bin/env bash
# Installs every system package vmtun's build, package, demo, tests and benchmarks need (Debian).
# Idempotent: packages already present are left alone. Called by both README commands.
# `--tests` (scripts/test.sh) also installs cargo-deny, which only the test run uses.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config   # cc for -sys crates
  libpcap-dev                  # pcap crate (cutover watcher)
  libnftnl-dev libmnl-dev      # nftnl crate (netfilter over netlink)
  iproute2                     # ip netns, veth: the namespace lab
  nftables iptables            # inspecting netfilter in tests; the seed's cutover for comparison
  iperf3 iputils-ping          # transfer and RTT checks
  tcpdump                      # the seed's cutover, for comparison
  openssl                      # the real-VM lab's TLS certificates (demo --real-vm --migrate-via underlay-tls)
  wireguard-go wireguard-tools # interoperability tests against a stock WireGuard
  procps psmisc                # ps, pkill-free process inspection in tests
  systemd man-db               # systemd-analyze verify of vmtun@.service (it looks up the man pages)
  util-linux                   # setpriv: tests/service.rs runs vmtun with the unit's capabilities only;
                               # unshare: tests/libvirt.rs's private mount and UTS namespaces
  # tests/libvirt.rs: libvirtd, its QEMU driver and virsh (bookworm's 9.0). Not
  # libvirt-daemon-system: its units would start a daemon in the root namespace; these ship none.
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  # tests/libvirt.rs migrates over SSH (qemu+ssh://): OpenSSH's client, which libvirt runs, and
  # dropbear as the new host's server in its namespaces. dropbear-bin is its binaries only: no
  # unit or init script that would start a server in the root namespace (openssh-server has both).
  openssh-client dropbear-bin
)

# PIDs of libvirt daemons running in this (the root) network namespace.
root_libvirt_daemons() {
  for pid in $(pgrep -x libvirtd || true) $(pgrep -x virtqemud || true); do
    [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$(readlink /proc/self/ns/net)" ] && echo "$pid"
  done
  return 0
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  daemons_before=$(root_libvirt_daemons)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$(root_libvirt_daemons)" != "$daemons_before" ]; then
    echo "setup: installing started a libvirt daemon in the root namespace (PIDs $(root_libvirt_daemons)); stop it" >&2
    exit 1
  fi
fi

# libvirt's QEMU driver resolves its default user before it reads qemu.conf, and does not load
# without it; libvirt-daemon-system would make it.
if ! getent passwd libvirt-qemu >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing the system user libvirt-qemu; run as root to make it" >&2
    exit 1
  fi
  useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
fi

# QEMU for tests/real_vm.rs: bookworm's 7.2 corrupts guests now and then in TCG migration (fixed
# in 9.0), so it comes from bookworm-backports, in a sources list this script owns. The mirror is
# the one the machine's own apt sources already use.
BACKPORTS_LIST=/etc/apt/sources.list.d/vmtun-bookworm-backports.sources
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing qemu-system-x86 (from bookworm-backports); run as root to install it" >&2
    exit 1
  fi
  if [ ! -e "$BACKPORTS_LIST" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
      grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]+/debian/?( |$)' | tr -d ' ' | sed 's:/$::' | head -n1 || true)
    if [ -z "$mirror" ]; then
      echo "setup: no Debian mirror found in /etc/apt; add bookworm-backports by hand, then rerun" >&2
      exit 1
    fi
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" >"$BACKPORTS_LIST"
  fi
  echo "setup: installing qemu-system-x86 from bookworm-backports" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi

# cargo-deny for the dependency check in scripts/test.sh (deny.toml): built from crates.io
# once, into ~/.cargo/bin. A debug build: 66 s here against 8 min 49 s optimised (2 cores,
# other builds running), and the offline check takes 1.6 s either way.
if [ "${1:-}" = "--tests" ] && ! cargo deny --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deny (cargo install --locked --debug cargo-deny; about a minute)" >&2
  cargo install --locked --debug cargo-deny
fi
