#!/bin/sh
# Wrapper around the EMQX image's entrypoint: writes the built-in-database bootstrap file for the
# `coexist` MQTT user from MQTT_SINK_PASSWORD, then hands over to /usr/bin/docker-entrypoint.sh.
# The file lives on a tmpfs (see docker-compose.yml), so the plaintext never reaches a volume.
set -eu

dir=/run/emqx-bootstrap
file="$dir/users.csv"

: "${MQTT_SINK_USERNAME:=coexist}"
if [ -z "${MQTT_SINK_PASSWORD:-}" ]; then
  echo "emqx entrypoint: MQTT_SINK_PASSWORD is empty; refusing to start" >&2
  exit 1
fi
# The bootstrap CSV is not quoted: keep the password to URL/CSV-safe characters
# (e.g. `openssl rand -hex 32`).
case "$MQTT_SINK_PASSWORD" in
  *,*|*\"*|*"
"*)
    echo "emqx entrypoint: MQTT_SINK_PASSWORD must not contain commas, quotes or newlines" >&2
    exit 1
    ;;
esac

mkdir -p "$dir"
umask 077
printf 'user_id,password,is_superuser\n%s,%s,true\n' \
  "$MQTT_SINK_USERNAME" "$MQTT_SINK_PASSWORD" > "$file"
unset MQTT_SINK_PASSWORD

exec /usr/bin/docker-entrypoint.sh "$@"
