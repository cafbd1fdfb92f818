#!/usr/bin/env bash
# postgres-setup.sh --dir DIR [--port PORT] | --stop DIR | --halt DIR | --resume DIR | --install-only
#
# A throwaway PostgreSQL server for Keyward's shared-keystore work and its tests:
#   - installs Debian's postgresql with apt-get when its binaries are missing (--install-only
#     stops there);
#   - runs `initdb` as an unprivileged user (the `postgres` system user when run as root:
#     PostgreSQL refuses to run as root; the data then lives in /tmp/keyward-pg.*, which the link
#     DIR/pgdata names), listening on 127.0.0.1:PORT (default: a free
#     port) and on a Unix socket beside its data, nothing else;
#   - creates a role `keyward` with a random password, kept only in DIR/pgpass (mode 0600, libpq's
#     password-file format), and a database `keyward` it owns; the superuser `pgowner`'s random
#     password is kept there too (tests create roles and databases with it);
#   - writes DIR/postgres.env (KEYWARD_TEST_PG: a postgres:// URL without the password;
#     KEYWARD_TEST_PG_ADMIN: the same for `pgowner`; PGPASSFILE: DIR/pgpass) and prints the
#     lines to export.
# --stop DIR stops that server (`pg_ctl stop -m fast`) and removes its data; DIR is the caller's.
# --halt DIR stops it and keeps its data; --resume DIR starts it again on the same port (tests of
# a database that goes away and comes back).
# Nothing here touches a system cluster or a service: the server lives and dies with DIR.
set -euo pipefail

dir=""
port=""
stop=""
halt=""
resume=""
install_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --stop) stop="${2:?--stop needs the directory given to --dir}"; shift 2 ;;
    --halt) halt="${2:?--halt needs the directory given to --dir}"; shift 2 ;;
    --resume) resume="${2:?--resume needs the directory given to --dir}"; shift 2 ;;
    --install-only) install_only=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "postgres-setup.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { echo "postgres-setup: $*" >&2; }

pg_bin() {
  local v
  for v in $(ls /usr/lib/postgresql 2>/dev/null | sort -rn); do
    [ -x "/usr/lib/postgresql/$v/bin/initdb" ] && { echo "/usr/lib/postgresql/$v/bin"; return 0; }
  done
  return 1
}

# shellcheck source=apt-install.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
if ! pg_bin >/dev/null; then
  say "installing postgresql with apt-get"
  apt_install --no-recommends postgresql postgresql-client
fi
bin="$(pg_bin)" || { say "no PostgreSQL binaries under /usr/lib/postgresql after installing"; exit 1; }
[ "$install_only" -eq 0 ] || exit 0

# Run a PostgreSQL program as the server's owner: ourselves, or `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ -n "$halt" ]; then
  [ -d "$halt/pgdata/data" ] || { say "no server data in $halt/pgdata"; exit 1; }
  home="$(readlink -f "$halt/pgdata")"
  as_owner "$bin/pg_ctl" -D "$home/data" -m fast -w stop >/dev/null
  say "halted the server of $halt (data kept)"
  exit 0
fi

if [ -n "$resume" ]; then
  [ -d "$resume/pgdata/data" ] || { say "no server data in $resume/pgdata"; exit 1; }
  home="$(readlink -f "$resume/pgdata")"
  as_owner "$bin/pg_ctl" -D "$home/data" -l "$home/postgres.log" -w -t 60 start >/dev/null ||
    { say "the server did not start (see $home/postgres.log)"; exit 1; }
  say "resumed the server of $resume"
  exit 0
fi

if [ -n "$stop" ]; then
  [ -d "$stop/pgdata/data" ] || { say "no server data in $stop/pgdata"; exit 1; }
  home="$(readlink -f "$stop/pgdata")"
  as_owner "$bin/pg_ctl" -D "$home/data" -m fast -w stop >/dev/null
  # The data lives outside DIR when we ran as root: remove it with the server.
  case "$home" in /tmp/keyward-pg.*) rm -rf "$home" ;; esac
  rm -f "$stop/pgdata"
  say "stopped the server of $stop and removed its data"
  exit 0
fi

[ -n "$dir" ] || { say "--dir DIR is required (or --stop DIR, --install-only)"; exit 2; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
[ ! -e "$dir/pgdata" ] || { say "$dir/pgdata exists: stop that server (--stop) and remove it first"; exit 1; }

if [ -z "$port" ]; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# The server's files: DIR/pgdata, or, when we are root, a directory of the `postgres` user's own
# under /tmp (DIR/pgdata then names it): the server's owner must reach them, and a root-owned
# 0700 temporary directory (what tests make) is closed to it.
chmod 700 "$dir"
if [ "$(id -u)" -eq 0 ]; then
  data_home="$(runuser -u postgres -- mktemp -d /tmp/keyward-pg.XXXXXX)"
  ln -s "$data_home" "$dir/pgdata"
else
  data_home="$dir/pgdata-home"
  mkdir -m 700 "$data_home"
  ln -s "$data_home" "$dir/pgdata"
fi
data="$data_home/data"

random_secret() { head -c 24 /dev/urandom | base64 | tr -d '/+='; }
owner_password="$(random_secret)"   # the superuser's: kept in DIR/pgpass (tests make roles)
password="$(random_secret)"         # the `keyward` role's: kept in DIR/pgpass only
pwfile="$(mktemp)"
printf '%s\n' "$owner_password" >"$pwfile"
[ "$(id -u)" -ne 0 ] || chown postgres "$pwfile"
# Password authentication (scram-sha-256) everywhere; the superuser `pgowner` exists only to
# create the role and database below.
as_owner "$bin/initdb" -D "$data" -A scram-sha-256 -U pgowner --pwfile="$pwfile" \
  -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
  { rm -f "$pwfile"; say "initdb failed (see $dir/initdb.log)"; exit 1; }
rm -f "$pwfile"

# The listening settings live in the data directory, so --resume starts the same server.
printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" \
  "$port" "$data_home" | as_owner tee -a "$data/postgresql.auto.conf" >/dev/null
as_owner "$bin/pg_ctl" -D "$data" -l "$data_home/postgres.log" -w -t 60 start >/dev/null ||
  { say "the server did not start (see $data_home/postgres.log)"; exit 1; }

as_owner env PGPASSWORD="$owner_password" "$bin/psql" -X -q -v ON_ERROR_STOP=1 \
  -h 127.0.0.1 -p "$port" -U pgowner -d postgres \
  -c "CREATE ROLE keyward LOGIN PASSWORD '$password'" \
  -c "CREATE DATABASE keyward OWNER keyward" >/dev/null

umask 077
printf '127.0.0.1:%s:*:keyward:%s\n127.0.0.1:%s:*:pgowner:%s\n' \
  "$port" "$password" "$port" "$owner_password" >"$dir/pgpass"
unset owner_password
chmod 600 "$dir/pgpass"
cat >"$dir/postgres.env" <<EOF
KEYWARD_TEST_PG=postgres://keyward@127.0.0.1:$port/keyward
KEYWARD_TEST_PG_ADMIN=postgres://pgowner@127.0.0.1:$port/postgres
PGPASSFILE=$dir/pgpass
EOF
say "server up on 127.0.0.1:$port (data in $data, log $data_home/postgres.log)"
echo "export KEYWARD_TEST_PG=postgres://keyward@127.0.0.1:$port/keyward"
echo "export PGPASSFILE=$dir/pgpass"
