#!/usr/bin/env bash
# Builds the Debian package target/debian/vmtun_<version>-1_<arch>.deb with cargo-deb: the
# release binary, the systemd unit vmtun@.service, libvirt's interface script, bash/zsh/fish
# completions and man pages (generated from the CLI's definition by the binary itself), and
# /etc/vmtun (0700, made by postinst). Then checks the package without installing it: its
# file list, and the unit as unpacked (scripts/verify-unit.sh). Install it with:
# dpkg -i target/debian/vmtun_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if ! cargo deb --version >/dev/null 2>&1; then
  echo "package: cargo-deb is missing; install it with: cargo install cargo-deb" >&2
  exit 1
fi

echo "package: building the release binary (the first build: about 6 minutes on 2 cores)" >&2
cargo build --release
vmtun() { cargo run --release --quiet -- "$@"; }
gen=target/packaging
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
vmtun manpages "$gen/man"
vmtun completions bash > "$gen/completions/vmtun.bash"
vmtun completions zsh > "$gen/completions/_vmtun"
vmtun completions fish > "$gen/completions/vmtun.fish"

# Stripped: the release profile keeps debug info for profiling (target/release/vmtun), the
# package does not need it (37 MB unstripped).
deb=$(cargo deb --no-build --strip | tail -n 1)
echo "package: built $deb" >&2

# What a user gets, read from the package itself.
listing=$(dpkg-deb -c "$deb")
for path in ./usr/bin/vmtun ./lib/systemd/system/vmtun@.service \
            ./lib/systemd/system/vmtun-follow-libvirt@.service ./usr/libexec/vmtun/libvirt-vif-up \
            ./usr/share/man/man1/vmtun.1.gz ./usr/share/man/man1/vmtun-up.1.gz \
            ./usr/share/bash-completion/completions/vmtun \
            ./usr/share/zsh/vendor-completions/_vmtun \
            ./usr/share/fish/vendor_completions.d/vmtun.fish; do
  grep -q " $path\$" <<<"$listing" || { echo "package: $path missing from $deb" >&2; exit 1; }
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst | grep -q 'install -d -m 0700 /etc/vmtun' \
  || { echo "package: postinst does not make /etc/vmtun 0700" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg -x "$deb" "$root"
"$root/usr/bin/vmtun" --version >/dev/null
scripts/verify-unit.sh "$root"
echo "package: $deb holds the binary, the unit (verified), completions and man pages" >&2
echo "$deb"
