#!/usr/bin/env bash
# Installs a socktop-agent .deb on this machine (as root), checks what it put where,
# runs the installed binary as the unit's user with the unit's capabilities, then
# removes and purges it and checks that nothing is left behind.
#
#   bash deploy/test-package.sh target/debian/socktop-agent_VERSION_ARCH.deb
#
# With SOCKTOP_REQUIRE_ALL=1 the installed agent must count CPU with eBPF.
set -euo pipefail

deb=$(realpath "$1")
package=socktop-agent
unit=/usr/lib/systemd/system/socktop-agent.service
state=/var/lib/socktop-agent
work=$(mktemp -d)
agent_pid=

cleanup() {
    if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    if [ -s "$work/log" ]; then
        echo "-- the last agent's log:" >&2
        cat "$work/log" >&2
    fi
    echo "FAIL: $*" >&2
    exit 1
}

# Every path under the folders a package may touch (but dpkg's own records and the
# backups the shadow tools keep of the user tables), and the users and groups.
snapshot() {
    find /usr /etc /var/lib /opt -xdev \( -path /var/lib/dpkg -o -path /var/lib/apt \) -prune -o -print 2>/dev/null |
        grep -Ev '^/etc/(passwd|group|shadow|gshadow|subuid|subgid)-$' | sort
    cut -d: -f1 /etc/passwd /etc/group | sort
}

# Whether dpkg is told not to install `path` here (minimal images drop man pages
# and docs with path-exclude).
excluded() {
    local pattern
    for pattern in $(sed -n 's/^path-exclude[= ]//p' /etc/dpkg/dpkg.cfg.d/* 2>/dev/null); do
        # shellcheck disable=SC2053 # the pattern is a glob on purpose
        [[ $1 == $pattern ]] && return 0
    done
    return 1
}

# The values of `key=` lines of the installed unit.
unit_values() {
    sed -n "s/^$1=//p" "$unit"
}

# setpriv's spelling of the unit's capabilities: -all,+bpf,+perfmon
setpriv_caps() {
    local caps
    caps=$(unit_values AmbientCapabilities | tr ' ' '\n' | sed -n 's/^CAP_\(.*\)/+\L\1/p' | paste -sd,)
    echo "-all${caps:+,$caps}"
}

# Starts the installed binary as the unit starts it: its user, capabilities and
# environment, on a loopback port; waits for it to listen; sets agent_pid and port.
start_like_the_unit() {
    local caps user env
    caps=$(setpriv_caps)
    user=$(unit_values User)
    mapfile -t env < <(unit_values Environment)
    # Emptied here, not by the background job's redirection, so the wait below
    # never reads the previous agent's log.
    : >"$work/log"
    env -i PATH=/usr/bin:/bin "${env[@]}" "$@" RUST_LOG=info \
        setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs \
            --inh-caps="$caps" --ambient-caps="$caps" --bounding-set="$caps" \
            "$(unit_values ExecStart)" --bind 127.0.0.1 --port 0 >>"$work/log" 2>&1 &
    agent_pid=$!
    for _ in $(seq 100); do
        port=$(sed -n 's|.*listening on wss\?://127.0.0.1:\([0-9]*\)/ws.*|\1|p' "$work/log")
        [ -n "$port" ] && return 0
        sleep 0.1
    done
    cat "$work/log" >&2
    fail "the installed agent did not start"
}

stop_agent() {
    kill "$agent_pid"
    wait "$agent_pid" || true
    agent_pid=
}

# GET PATH on the agent's port, plain HTTP; prints the status line.
http_status() {
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" >&3
    head -n 1 <&3 | tr -d '\r'
    exec 3<&-
}

dpkg -s "$package" >/dev/null 2>&1 && fail "$package is installed already"
snapshot >"$work/before"

echo "== dpkg -i"
dpkg -i "$deb"
version=$(dpkg-deb -f "$deb" Version)

echo "== files"
for path in /usr/bin/socktop_agent "$unit" /usr/share/man/man1/socktop_agent.1.gz \
    /usr/share/bash-completion/completions/socktop_agent /usr/share/zsh/vendor-completions/_socktop_agent \
    /usr/share/fish/vendor_completions.d/socktop_agent.fish /usr/share/doc/$package/README.md \
    /usr/share/doc/$package/DEPLOY.md /usr/share/doc/$package/PROTOCOL.md /usr/share/doc/$package/processes.proto; do
    dpkg -L "$package" | grep -qx "$path" || fail "$path is not in the package"
    [ -s "$path" ] || excluded "$path" || fail "$path is missing or empty"
done
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/man/man1/socktop_agent.1.gz | zcat | grep -q 'SOCKTOP_AGENT_EBPF' \
    || fail "the man page lacks the environment"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/bash-completion/completions/socktop_agent >"$work/completion"
bash -c "source $work/completion && complete -p socktop_agent" >/dev/null || fail "the bash completion does not load"
installed=$(socktop_agent --version)
[ "$installed" = "socktop_agent ${version%-*}" ] || fail "--version says '$installed', the package is $version"
if command -v systemd-analyze >/dev/null; then
    # It also looks the unit's man: page up, where man is installed.
    man_check=no
    if command -v man >/dev/null && ! excluded /usr/share/man/man1/socktop_agent.1.gz; then man_check=yes; fi
    systemd-analyze verify --man="$man_check" "$unit" || fail "systemd-analyze verify $unit"
else
    echo "systemd-analyze is not installed: the unit is not verified"
fi
ls /etc/systemd/system/*.wants/socktop-agent.service 2>/dev/null && fail "the unit was enabled on install"

echo "== user and state folder"
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd socktop) || fail "no user socktop"
[ "$uid" -lt 1000 ] || fail "socktop is not a system user (uid $uid)"
[ "$home" = "$state" ] || fail "socktop's home is $home"
case "$shell" in */nologin | */false) ;; *) fail "socktop can log in ($shell)" ;; esac
[ "$(stat -c '%U:%G %a' "$state")" = "socktop:socktop 750" ] || fail "$state: $(stat -c '%U:%G %a' "$state")"

echo "== the installed agent as the unit runs it: $(unit_values User), $(setpriv_caps)"
start_like_the_unit
grep -q 'cpu source: ' "$work/log" || fail "no cpu source logged"
if [ "${SOCKTOP_REQUIRE_ALL:-}" = 1 ]; then
    grep -q 'cpu source: ebpf' "$work/log" || { cat "$work/log" >&2; fail "eBPF required"; }
    grep -q 'capabilities after start-up: kept CAP_PERFMON' "$work/log" || { cat "$work/log" >&2; fail "capabilities"; }
fi
[ "$(stat -c %U "/proc/$agent_pid")" = socktop ] || fail "the agent does not run as socktop"
[ "$(http_status /healthz)" = "HTTP/1.1 200 OK" ] || fail "/healthz did not answer 200"
stop_agent
grep "cpu source\|capabilities" "$work/log"

echo "== TLS files in the state folder"
start_like_the_unit SOCKTOP_ENABLE_SSL=1
stop_agent
[ "$(stat -c '%U %a' "$state/tls/key.pem")" = "socktop 600" ] || fail "key.pem: $(stat -c '%U %a' "$state/tls/key.pem")"
[ -s "$state/tls/cert.pem" ] || fail "no certificate made in $state/tls"

echo "== dpkg -r"
dpkg -r "$package"
[ ! -e /usr/bin/socktop_agent ] || fail "the binary is left after removal"
getent passwd socktop >/dev/null || fail "removal (not purge) took the user"

echo "== dpkg --purge"
dpkg --purge "$package"
snapshot >"$work/after"
diff "$work/before" "$work/after" || fail "the purge left the lines above behind"
echo "package check passed: $deb"
