/*
 * A minimal chat relay as a C service would write it on libwebsockets (Debian's
 * libwebsockets-dev): one service thread, libev's epoll loop under lws (its evlib plugin;
 * LWS_EVLIB=poll takes lws's own poll(2) loop), a hash table from userId to that user's
 * connections, and one queue of frames per connection written from lws's writeable
 * callback, one frame per callback, as lws asks.
 *
 * Speaks the subset of the engine's protocol that benches/compare.sh drives: `auth` (open
 * mode), `ping`, `send_message` routed to every device of the receiver with a
 * `message_ack` (or `peer_offline`), and the plain echo scenario (text that is not a JSON
 * object comes back as it was). String values are copied into the answers as they came,
 * escapes included, so they stay valid JSON.
 *
 * Build: cc -O2 -o relay relay.c $(pkg-config --cflags --libs libwebsockets)
 * Usage: relay 127.0.0.1:PORT
 */
#include <libwebsockets.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

/* A frame waiting to be written: LWS_PRE bytes of headroom, then the payload. */
struct frame {
	struct frame *next;
	size_t len;
	unsigned char buf[];
};

/* One connection (lws's per-session data). */
struct conn {
	struct lws *wsi;
	char *user;                /* NULL until `auth` */
	struct conn *next_device;  /* the user's next connection */
	struct frame *head, *tail; /* frames to write, oldest first */
	unsigned char *rx;         /* a message arriving in fragments */
	size_t rx_len, rx_cap;
};

/* userId -> the user's connections: open addressing, linear probing, tombstones. */
struct slot {
	char *user; /* NULL: empty; TOMBSTONE: deleted */
	struct conn *devices;
};
static char TOMBSTONE_MARK;
#define TOMBSTONE (&TOMBSTONE_MARK)
static struct slot *users;
static size_t users_cap, users_used;

static uint64_t hash(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ull;
	return h;
}

/* The slot holding `user`, or the one it would go in. */
static struct slot *find(const char *user)
{
	size_t i = hash(user) & (users_cap - 1);
	struct slot *grave = NULL;
	for (;; i = (i + 1) & (users_cap - 1)) {
		struct slot *s = &users[i];
		if (s->user == NULL)
			return grave ? grave : s;
		if (s->user == TOMBSTONE) {
			if (!grave)
				grave = s;
		} else if (!strcmp(s->user, user)) {
			return s;
		}
	}
}

static void grow(void)
{
	struct slot *old = users;
	size_t old_cap = users_cap;
	users_cap = old_cap ? old_cap * 2 : 1024;
	users = calloc(users_cap, sizeof *users);
	if (!users)
		abort();
	users_used = 0;
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].user && old[i].user != TOMBSTONE) {
			*find(old[i].user) = old[i];
			users_used++;
		}
	}
	free(old);
}

static void add_device(struct conn *c)
{
	if ((users_used + 1) * 2 > users_cap)
		grow();
	struct slot *s = find(c->user);
	if (s->user == NULL || s->user == TOMBSTONE) {
		s->user = strdup(c->user);
		s->devices = NULL;
		users_used++;
	}
	c->next_device = s->devices;
	s->devices = c;
}

static void remove_device(struct conn *c)
{
	struct slot *s = find(c->user);
	if (s->user == NULL || s->user == TOMBSTONE)
		return;
	for (struct conn **p = &s->devices; *p; p = &(*p)->next_device) {
		if (*p == c) {
			*p = c->next_device;
			break;
		}
	}
	if (!s->devices) {
		free(s->user);
		s->user = TOMBSTONE;
	}
}

/* A span of the message: a JSON value as it came (a string without its quotes). */
struct span {
	const char *at;
	size_t len;
};

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Past the string whose opening quote is at p[-1]; NULL if it does not end. */
static const char *past_string(const char *p, const char *end)
{
	while (p < end) {
		if (*p == '\\')
			p += 2;
		else if (*p++ == '"')
			return p;
	}
	return NULL;
}

/* Past one JSON value at p; NULL on malformed input. */
static const char *past_value(const char *p, const char *end)
{
	if (p >= end)
		return NULL;
	if (*p == '"')
		return past_string(p + 1, end);
	if (*p == '{' || *p == '[') {
		int depth = 0;
		while (p < end) {
			char ch = *p++;
			if (ch == '"') {
				p = past_string(p, end);
				if (!p)
					return NULL;
			} else if (ch == '{' || ch == '[') {
				depth++;
			} else if ((ch == '}' || ch == ']') && --depth == 0) {
				return p;
			}
		}
		return NULL;
	}
	while (p < end && *p != ',' && *p != '}' && *p != ' ' && *p != '\n')
		p++;
	return p;
}

/* The fields the relay reads from a top-level JSON object. */
struct request {
	struct span type, user_id, device_id, receiver_id, message_id, content, ts;
};

/* Reads the top-level fields of `text`; 0 when it is not a JSON object. */
static int parse(const char *p, const char *end, struct request *r)
{
	memset(r, 0, sizeof *r);
	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return 0;
	p = skip_ws(p + 1, end);
	while (p < end && *p == '"') {
		const char *key = p + 1, *key_end = past_string(key, end);
		if (!key_end)
			return 0;
		size_t key_len = (size_t)(key_end - 1 - key);
		p = skip_ws(key_end, end);
		if (p >= end || *p != ':')
			return 0;
		p = skip_ws(p + 1, end);
		const char *value_end = past_value(p, end);
		if (!value_end)
			return 0;
		struct span value = {p, (size_t)(value_end - p)};
		if (*p == '"') {
			value.at++;
			value.len -= 2;
		}
#define FIELD(name, member)                                                   \
	if (key_len == sizeof(name) - 1 && !memcmp(key, name, key_len))       \
		r->member = value;
		FIELD("type", type)
		FIELD("userId", user_id)
		FIELD("deviceId", device_id)
		FIELD("receiverId", receiver_id)
		FIELD("messageId", message_id)
		FIELD("content", content)
		FIELD("ts", ts)
#undef FIELD
		p = skip_ws(value_end, end);
		if (p < end && *p == ',')
			p = skip_ws(p + 1, end);
	}
	return p < end && *p == '}';
}

static int is(struct span s, const char *text)
{
	return s.at && s.len == strlen(text) && !memcmp(s.at, text, s.len);
}

static long long now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Queues `len` bytes of `payload` on `c` and asks lws for a writeable callback. */
static void queue(struct conn *c, const char *payload, size_t len)
{
	struct frame *f = malloc(sizeof *f + LWS_PRE + len);
	if (!f)
		abort();
	f->next = NULL;
	f->len = len;
	memcpy(f->buf + LWS_PRE, payload, len);
	if (c->tail)
		c->tail->next = f;
	else
		c->head = f;
	c->tail = f;
	lws_callback_on_writable(c->wsi);
}

/* The answer being built (one at a time: the service thread is the only thread). */
static char out[1 << 16];

#define OUT(...) snprintf(out, sizeof out, __VA_ARGS__)
#define SPAN(s) (int)(s).len, (s).at ? (s).at : ""

/* Queues the answer OUT built, `n` bytes as snprintf counted them: one that did not fit
 * (fields near the 64 KiB message bound) is dropped rather than sent cut. */
static void queue_out(struct conn *c, int n)
{
	if (n >= 0 && (size_t)n < sizeof out)
		queue(c, out, (size_t)n);
}

static void on_message(struct conn *c, const char *text, size_t len)
{
	struct request r;
	if (!parse(text, text + len, &r)) {
		queue(c, text, len); /* the echo scenario */
		return;
	}
	int n;
	if (is(r.type, "auth")) {
		if (!r.user_id.at || c->user)
			return;
		c->user = strndup(r.user_id.at, r.user_id.len);
		add_device(c);
		n = OUT("{\"type\":\"auth_success\",\"userId\":\"%.*s\",\"deviceId\":\"%.*s\","
			"\"timestamp\":%lld}",
			SPAN(r.user_id), SPAN(r.device_id), now_ms());
		queue_out(c, n);
	} else if (is(r.type, "ping")) {
		n = OUT("{\"type\":\"pong\",\"ts\":%.*s,\"timestamp\":%lld}",
			r.ts.at ? (int)r.ts.len : 4, r.ts.at ? r.ts.at : "null", now_ms());
		queue_out(c, n);
	} else if (is(r.type, "send_message") && c->user && r.receiver_id.at &&
		   r.receiver_id.len < 256) {
		char receiver[256];
		snprintf(receiver, sizeof receiver, "%.*s", SPAN(r.receiver_id));
		struct slot *s = users_cap ? find(receiver) : NULL;
		struct conn *devices = s && s->user && s->user != TOMBSTONE ? s->devices : NULL;
		if (devices) {
			n = OUT("{\"type\":\"new_message\",\"messageId\":\"%.*s\",\"senderId\":\"%s\","
				"\"receiverId\":\"%.*s\",\"content\":\"%.*s\",\"timestamp\":%lld,"
				"\"status\":\"delivered\"}",
				SPAN(r.message_id), c->user, SPAN(r.receiver_id), SPAN(r.content),
				now_ms());
			for (struct conn *d = devices; d; d = d->next_device)
				queue_out(d, n);
			n = OUT("{\"type\":\"message_ack\",\"messageId\":\"%.*s\",\"status\":\"sent\","
				"\"timestamp\":%lld}",
				SPAN(r.message_id), now_ms());
		} else {
			n = OUT("{\"type\":\"error\",\"code\":\"peer_offline\",\"message\":\"no device "
				"online\",\"ref\":\"%.*s\"}",
				SPAN(r.message_id));
		}
		queue_out(c, n);
	}
}

/* Takes one fragment; a whole message goes to on_message. */
static void on_receive(struct conn *c, const void *in, size_t len)
{
	int first = lws_is_first_fragment(c->wsi), last = lws_is_final_fragment(c->wsi);
	if (first && last) {
		on_message(c, in, len);
		return;
	}
	if (first)
		c->rx_len = 0;
	if (c->rx_len + len > c->rx_cap) {
		c->rx_cap = (c->rx_len + len) * 2;
		c->rx = realloc(c->rx, c->rx_cap);
		if (!c->rx)
			abort();
	}
	memcpy(c->rx + c->rx_len, in, len);
	c->rx_len += len;
	if (last)
		on_message(c, (const char *)c->rx, c->rx_len);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		    size_t len)
{
	struct conn *c = user;
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		memset(c, 0, sizeof *c);
		c->wsi = wsi;
		break;
	case LWS_CALLBACK_RECEIVE:
		if (!lws_frame_is_binary(wsi))
			on_receive(c, in, len);
		break;
	case LWS_CALLBACK_SERVER_WRITEABLE: {
		struct frame *f = c->head;
		if (!f)
			break;
		if (lws_write(wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_TEXT) < (int)f->len)
			return -1;
		c->head = f->next;
		if (!c->head)
			c->tail = NULL;
		free(f);
		if (c->head)
			lws_callback_on_writable(wsi);
		break;
	}
	case LWS_CALLBACK_CLOSED:
		if (c->user) {
			remove_device(c);
			free(c->user);
		}
		while (c->head) {
			struct frame *next = c->head->next;
			free(c->head);
			c->head = next;
		}
		free(c->rx);
		break;
	default:
		break;
	}
	return 0;
}

static const struct lws_protocols protocols[] = {
	{"chat", callback, sizeof(struct conn), 1 << 16, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0}, /* the end of the list */
};

/* SIGTERM/SIGINT end the process at once: the libev loop does not return to check a
 * flag, and a bench peer has nothing to flush. */
static void on_signal(int sig)
{
	(void)sig;
	_exit(0);
}

int main(int argc, char **argv)
{
	char host[64] = "127.0.0.1";
	int port = 18093;
	if (argc > 1 && sscanf(argv[1], "%63[^:]:%d", host, &port) != 2) {
		fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
		return 2;
	}
	const char *evlib = getenv("LWS_EVLIB");
	int poll_loop = evlib && !strcmp(evlib, "poll");
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof info);
	info.iface = host;
	info.port = port;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | (poll_loop ? 0 : LWS_SERVER_OPTION_LIBEV);
	lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
	struct lws_context *context = lws_create_context(&info);
	if (!context) {
		fprintf(stderr, "lws: cannot create the context on %s:%d\n", host, port);
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	printf("listening on %s:%d (libwebsockets %s, %s loop)\n", host, port,
	       lws_get_library_version(), poll_loop ? "poll" : "libev");
	fflush(stdout);
	while (lws_service(context, 0) >= 0)
		;
	lws_context_destroy(context);
	return 0;
}
