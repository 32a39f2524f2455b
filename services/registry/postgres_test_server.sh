#!/bin/sh
# Starts or stops the throwaway PostgreSQL 15 server that ctest shares among the registry's unit
# tests (a CTest fixture, see CMakeLists.txt); postgres_test_server.h finds it through
# $FLOTILLA_TEST_POSTGRES_DIR and otherwise starts its own. Usage: postgres_test_server.sh start|stop DIR
# As root (CI containers) the server runs as Debian's `postgres` user: PostgreSQL refuses root.
set -eu
action=$1
directory=$2
binaries=/usr/lib/postgresql/15/bin
as_user=""
if [ "$(id -u)" = 0 ]; then as_user="runuser -u postgres --"; fi
case "$action" in
  start)
    if [ ! -x "$binaries/initdb" ]; then
      echo "PostgreSQL 15 is not installed: the PostgreSQL cases will be skipped"
      exit 0
    fi
    if [ -f "$directory/data/postmaster.pid" ]; then
      $as_user "$binaries/pg_ctl" -D "$directory/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$directory"
    mkdir -p "$directory"
    if [ -n "$as_user" ]; then chown postgres "$directory"; fi
    $as_user "$binaries/initdb" -D "$directory/data" -A trust -U flotilla --no-sync >"$directory/initdb.log" 2>&1
    $as_user "$binaries/pg_ctl" -D "$directory/data" -l "$directory/server.log" -w \
      -o "-k $directory -c listen_addresses='' -c fsync=off -c max_connections=200" start >/dev/null
    ;;
  stop)
    if [ -f "$directory/data/postmaster.pid" ]; then
      $as_user "$binaries/pg_ctl" -D "$directory/data" -m immediate stop >/dev/null
    fi
    rm -rf "$directory"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
