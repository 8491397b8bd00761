#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests:
# start the installed one, or install Debian's and let local TCP connections in.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

answers() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h 127.0.0.1 -p 5432
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

wait_until_ready() {
  for _ in $(seq 1 60); do
    answers && return 0
    sleep 0.5  # polling a server that is starting up
  done
  echo "ensure-postgres: PostgreSQL did not come up on 127.0.0.1:5432" >&2
  return 1
}

answers && exit 0

fresh_install=no
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "ensure-postgres: installing PostgreSQL from Debian"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fresh_install=yes
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
if [ "$fresh_install" = yes ]; then
  # A new, throwaway test server: trust loopback connections, as the tests expect.
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
fi
echo "ensure-postgres: starting PostgreSQL $version"
$SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
wait_until_ready
