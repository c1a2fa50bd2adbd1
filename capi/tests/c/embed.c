/*
 * Embeds codervpn through its C API: starts a userspace-mode session (tun_fd -1),
 * prints every callback, waits for a peer update that names an agent, then stops.
 *
 *   embed URL TOKEN [TIMEOUT_SECONDS]
 *
 * Output lines the test reads:
 *   version codervpn ...
 *   settings applied (N bytes, mtu M)
 *   agent NAME
 *   started
 *   stop 0
 * Exit 0 when an agent was seen and the stop was clean.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codervpn.h"

struct state {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int agents_seen;
};

/* A protobuf varint at *p (< end); 0 when truncated. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/*
 * Calls found(field, data, len) for each length-delimited field of one message and
 * returns 1, or 0 when the bytes are not a well-formed message. Varint fields are
 * reported with data NULL and len = value.
 */
static int walk(const uint8_t *p, size_t n,
                void (*found)(void *arg, uint64_t field, const uint8_t *data, uint64_t len),
                void *arg) {
    const uint8_t *end = p + n;
    while (p < end) {
        uint64_t key, len;
        if (!read_varint(&p, end, &key)) return 0;
        switch (key & 7) {
        case 0:
            if (!read_varint(&p, end, &len)) return 0;
            found(arg, key >> 3, NULL, len);
            break;
        case 2:
            if (!read_varint(&p, end, &len) || len > (uint64_t)(end - p)) return 0;
            found(arg, key >> 3, p, len);
            p += len;
            break;
        case 1:
            if (end - p < 8) return 0;
            p += 8;
            break;
        case 5:
            if (end - p < 4) return 0;
            p += 4;
            break;
        default:
            return 0;
        }
    }
    return 1;
}

/* Agent.name is field 2. */
static void agent_field(void *arg, uint64_t field, const uint8_t *data, uint64_t len) {
    struct state *s = arg;
    if (field != 2 || data == NULL) return;
    printf("agent %.*s\n", (int)len, (const char *)data);
    pthread_mutex_lock(&s->lock);
    s->agents_seen++;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

/* PeerUpdate.upserted_agents is field 2. */
static void update_field(void *arg, uint64_t field, const uint8_t *data, uint64_t len) {
    if (field == 2 && data != NULL) walk(data, len, agent_field, arg);
}

/* NetworkSettingsRequest.mtu is field 2 (a varint). */
static void settings_field(void *arg, uint64_t field, const uint8_t *data, uint64_t len) {
    if (field == 2 && data == NULL) *(uint64_t *)arg = len;
}

static int32_t on_settings(void *ctx, const uint8_t *request, size_t request_len,
                           char *error, size_t error_len) {
    (void)ctx;
    uint64_t mtu = 0;
    if (!walk(request, request_len, settings_field, &mtu)) {
        snprintf(error, error_len, "malformed NetworkSettingsRequest (%zu bytes)", request_len);
        printf("settings refused\n");
        fflush(stdout);
        return 1;
    }
    printf("settings applied (%zu bytes, mtu %llu)\n", request_len, (unsigned long long)mtu);
    fflush(stdout);
    return 0;
}

static void on_peer_update(void *ctx, const uint8_t *update, size_t update_len) {
    printf("peer update (%zu bytes)\n", update_len);
    if (!walk(update, update_len, update_field, ctx)) printf("peer update malformed\n");
    fflush(stdout);
}

static void on_log(void *ctx, int32_t level, const char *message) {
    (void)ctx;
    printf("log %d %s\n", level, message);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s URL TOKEN [TIMEOUT_SECONDS]\n", argv[0]);
        return 2;
    }
    int timeout = argc > 3 ? atoi(argv[3]) : 60;
    printf("version %s\n", codervpn_version());
    printf("utun_fd %d\n", codervpn_utun_fd());

    struct state s = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    codervpn_header headers[] = {{"X-Embed-Test", "1"}};
    codervpn_config cfg = {
        .coder_url = argv[1],
        .session_token = argv[2],
        .headers = headers,
        .headers_len = 1,
        .device_id = "embed-test-device",
        .device_os = "Linux",
        .coder_desktop_version = "0.0.1",
        .socks5_addr = NULL,
    };
    codervpn_callbacks cb = {on_settings, on_peer_update, on_log};
    codervpn_session *session = NULL;

    /* Argument checks come back as typed codes, not crashes. */
    printf("null cfg %d\n", codervpn_start(NULL, -1, cb, &s, &session));
    printf("null session stop %d\n", codervpn_stop(NULL));

    int rc = codervpn_start(&cfg, -1, cb, &s, &session);
    if (rc != CODERVPN_OK) {
        printf("start failed %d: %s\n", rc, codervpn_last_error());
        return 1;
    }
    printf("started\n");
    fflush(stdout);

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout;
    pthread_mutex_lock(&s.lock);
    while (s.agents_seen == 0) {
        if (pthread_cond_timedwait(&s.changed, &s.lock, &deadline) != 0) break;
    }
    int seen = s.agents_seen;
    pthread_mutex_unlock(&s.lock);
    if (seen == 0) printf("no agent within %d s\n", timeout);

    rc = codervpn_stop(session);
    printf("stop %d%s%s\n", rc, rc ? ": " : "", rc ? codervpn_last_error() : "");
    fflush(stdout);
    return seen > 0 && rc == CODERVPN_OK ? 0 : 1;
}
