/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Telnet for one connection: libtelnet parses the protocol, we assemble and
 * clean the lines.
 *
 * Invariants:
 * - Option negotiation is libtelnet's (RFC 1143 "Q method"): it answers
 *   every WILL/WONT/DO/DONT from the table below, refusing what we do not
 *   support, so no request goes unanswered and no loop of replies starts.
 *   None of the protocol bytes ever reaches a line.
 * - A line ends at CR LF, CR NUL, lone CR, or LF. At most MUD_LINE_MAX bytes
 *   are kept: past that the handler is told once and the rest of the line
 *   is discarded up to its end, so a peer that never sends a newline costs
 *   a fixed amount of memory and the connection stays usable.
 * - A line reaches the handler scrubbed: printable ASCII and well-formed
 *   UTF-8 only. So nothing a player types reaches another player raw.
 * - Output goes through libtelnet ("\n" -> CRLF, byte 0xFF escaped), is
 *   collected while libtelnet encodes it and leaves as one socket write.
 * - A peer that turns on compression (IAC SB COMPRESS2 IAC SE: libtelnet
 *   starts inflating what follows without asking whether it was agreed; we
 *   refuse it, and MCCP only ever compresses what the server sends) is
 *   refused: the handler is told once, and no more of its input is parsed,
 *   so it can neither garble lines nor make us inflate a decompression bomb.
 */
#include <errno.h>
#include <stddef.h> /* before libtelnet.h, which uses size_t without it */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libtelnet.h>

#include "mud.h"

#define OUTPUT_CHUNK 4096

struct TelnetIO {
    telnet_t *telnet;
    TelnetIOHandlers handlers;
    void *context;
    bool after_cr;   /* the previous byte ended a line with CR */
    bool discarding; /* the current line is over the cap */
    unsigned depth;  /* calls into libtelnet on the stack */
    bool destroyed;  /* telnet_io_destroy was called: deliver nothing more */
    bool refused;    /* the peer broke the protocol: parse nothing more */
    unsigned errors; /* protocol errors logged so far */
    size_t line_length;
    char line[MUD_LINE_MAX];
    char scrubbed[MUD_LINE_MAX + 1];
    size_t output_length; /* bytes collected for the next socket write */
    char output[OUTPUT_CHUNK];
};

/* What we negotiate: we accept the client's window size and terminal type
 * (and ignore them), and refuse everything else, ECHO included: the client
 * echoes what the player types, as line-mode telnet expects. */
static const telnet_telopt_t supported_options[] = {
    {TELNET_TELOPT_NAWS, TELNET_WONT, TELNET_DO},
    {TELNET_TELOPT_TTYPE, TELNET_WONT, TELNET_DO},
    {-1, 0, 0},
};

/* ---- Scrubbing ---------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at `bytes` (RFC 3629: no
 * overlong forms, no surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_sequence_length(const unsigned char *bytes, size_t available)
{
    unsigned char lead = bytes[0];
    size_t length;
    unsigned char low = 0x80, high = 0xBF; /* allowed range of the second byte */
    if (lead >= 0xC2 && lead <= 0xDF)
        length = 2;
    else if (lead >= 0xE0 && lead <= 0xEF)
        length = 3;
    else if (lead >= 0xF0 && lead <= 0xF4)
        length = 4;
    else
        return 0;
    if (lead == 0xE0)
        low = 0xA0; /* overlong */
    else if (lead == 0xED)
        high = 0x9F; /* surrogates */
    else if (lead == 0xF0)
        low = 0x90; /* overlong */
    else if (lead == 0xF4)
        high = 0x8F; /* past U+10FFFF */
    if (available < length || bytes[1] < low || bytes[1] > high)
        return 0;
    for (size_t i = 2; i < length; i++)
        if ((bytes[i] & 0xC0) != 0x80)
            return 0;
    return length;
}

/* Backspace: drops the last character written, a whole UTF-8 sequence. */
static size_t erase_last(const char *output, size_t length)
{
    while (length > 0 && ((unsigned char)output[length - 1] & 0xC0) == 0x80)
        length--;
    return length > 0 ? length - 1 : 0;
}

size_t telnet_io_scrub(const char *input, size_t length, char *output)
{
    const unsigned char *bytes = (const unsigned char *)input;
    size_t out = 0;
    for (size_t i = 0; i < length;) {
        unsigned char byte = bytes[i];
        if (byte < 0x80) {
            if (byte >= 0x20 && byte != 0x7F)
                output[out++] = (char)byte;
            else if (byte == '\t')
                output[out++] = ' ';
            else if (byte == 0x08 || byte == 0x7F)
                out = erase_last(output, out);
            i++; /* every other control byte (ESC, BEL, NUL...) vanishes */
            continue;
        }
        size_t sequence = utf8_sequence_length(bytes + i, length - i);
        if (sequence == 0) {
            output[out++] = '?';
            i++;
            continue;
        }
        /* C1 controls (U+0080..U+009F) are well-formed but still controls. */
        if (!(byte == 0xC2 && bytes[i + 1] < 0xA0)) {
            memcpy(output + out, bytes + i, sequence);
            out += sequence;
        }
        i += sequence;
    }
    output[out] = '\0';
    return out;
}

/* ---- Input: line assembly ----------------------------------------------- */

static void end_line(TelnetIO *io)
{
    bool was_discarding = io->discarding;
    size_t length = io->line_length;
    io->discarding = false;
    io->line_length = 0;
    if (was_discarding)
        return; /* the handler heard about it when the cap was passed */
    size_t scrubbed = telnet_io_scrub(io->line, length, io->scrubbed);
    io->handlers.line(io->context, io->scrubbed, scrubbed);
}

static void add_byte(TelnetIO *io, char byte)
{
    if (io->discarding)
        return;
    if (io->line_length == sizeof(io->line)) {
        io->discarding = true;
        io->handlers.overlong(io->context);
        return;
    }
    io->line[io->line_length++] = byte;
}

static void receive_data(TelnetIO *io, const char *data, size_t length)
{
    for (size_t i = 0; i < length && !io->destroyed; i++) {
        char byte = data[i];
        bool after_cr = io->after_cr;
        io->after_cr = false;
        /* CR LF and CR NUL are one end of line, already taken at the CR. */
        if (after_cr && (byte == '\n' || byte == '\0'))
            continue;
        if (byte == '\r' || byte == '\n') {
            io->after_cr = byte == '\r';
            end_line(io);
            continue;
        }
        add_byte(io, byte);
    }
}

/* ---- Output ------------------------------------------------------------- */

static void flush_output(TelnetIO *io)
{
    if (io->output_length == 0)
        return;
    size_t length = io->output_length;
    io->output_length = 0;
    io->handlers.send(io->context, io->output, length);
}

static void collect_output(TelnetIO *io, const char *bytes, size_t length)
{
    while (length > 0) {
        if (io->output_length == sizeof(io->output))
            flush_output(io);
        size_t room = sizeof(io->output) - io->output_length;
        size_t take = length < room ? length : room;
        memcpy(io->output + io->output_length, bytes, take);
        io->output_length += take;
        bytes += take;
        length -= take;
    }
}

/* ---- libtelnet's events ------------------------------------------------- */

static void on_telnet_event(telnet_t *telnet, telnet_event_t *event, void *user_data)
{
    (void)telnet;
    TelnetIO *io = user_data;
    if (io->destroyed || io->refused)
        return; /* a line handler ended the session, or we refused the peer */
    switch (event->type) {
    case TELNET_EV_DATA:
        receive_data(io, event->data.buffer, event->data.size);
        break;
    case TELNET_EV_SEND:
        collect_output(io, event->data.buffer, event->data.size);
        break;
    case TELNET_EV_COMPRESS:
        if (event->compress.state) {
            io->refused = true;
            io->handlers.refused(io->context, "it turned on compression, which we refuse");
        }
        break;
    case TELNET_EV_WARNING:
    case TELNET_EV_ERROR:
        /* A confused or hostile peer. libtelnet recovers (it drops the bad
         * sequence); we log a few, never the peer's bytes themselves. */
        if (io->errors++ < 3)
            mud_log("telnet %s: %s", event->type == TELNET_EV_ERROR ? "error" : "warning",
                    event->error.msg);
        break;
    default:
        /* Negotiation is answered by libtelnet itself; window size and
         * terminal type (subnegotiations) are accepted and ignored. */
        break;
    }
}

/* ---- Public ------------------------------------------------------------- */

TelnetIO *telnet_io_create(PlexArena *arena, const TelnetIOHandlers *handlers, void *context)
{
    TelnetIO *io = plex_arena_calloc(arena, sizeof(*io));
    if (!io)
        return NULL;
    io->handlers = *handlers;
    io->context = context;
    io->telnet = telnet_init(supported_options, on_telnet_event, 0, io);
    if (!io->telnet) {
        errno = ENOMEM;
        return NULL;
    }
    return io;
}

/* A session may end while one of its lines is being handled, that is,
 * inside telnet_recv: libtelnet's state is then freed once telnet_recv has
 * returned, not under its feet. (The TelnetIO itself is in the flow's arena,
 * which the engine keeps until the running handler returns.) */
void telnet_io_destroy(TelnetIO *io)
{
    if (!io || io->destroyed)
        return;
    io->destroyed = true;
    if (io->depth == 0)
        telnet_free(io->telnet);
}

/* After a call into libtelnet: false if the session ended meanwhile. */
static bool leave_libtelnet(TelnetIO *io)
{
    if (--io->depth == 0 && io->destroyed)
        telnet_free(io->telnet);
    return !io->destroyed;
}

void telnet_io_receive(TelnetIO *io, const void *data, size_t length)
{
    if (io->destroyed || io->refused)
        return;
    io->depth++;
    telnet_recv(io->telnet, data, length);
    if (leave_libtelnet(io))
        flush_output(io); /* negotiation replies libtelnet made, if any */
}

void telnet_io_print(TelnetIO *io, const char *text)
{
    if (io->destroyed)
        return;
    /* "%s": the text is data, never a format. telnet_printf turns "\n" into
     * CRLF and escapes IAC. */
    io->depth++;
    telnet_printf(io->telnet, "%s", text);
    if (leave_libtelnet(io))
        flush_output(io);
}
