-- dropsync.lua: a Wireshark / tshark dissector for the dropsync wire protocol
-- (docs/PROTOCOL.md; the shared contract's section 2 for the frame layouts).
--
-- Load it for one run:
--     tshark -X lua_script:contrib/wireshark/dropsync.lua -r capture.pcapng
-- or copy it into your personal Lua plugins folder (Help > About Wireshark >
-- Folders > Personal Lua Plugins, e.g. ~/.local/lib/wireshark/plugins/).
--
-- Ports. The server listens on any two ports, so they are preferences:
--     dropsync.send_port     default 9000  (the server's first argument:
--                                            client -> server transfers)
--     dropsync.receive_port  default 9001  (its second argument:
--                                            server -> client transfers)
-- Set them in Edit > Preferences > Protocols > DROPSYNC, or per run with
--     -o dropsync.send_port:40001 -o dropsync.receive_port:40002
-- Changing them re-registers the dissector on the new ports; 0 disables one.
-- "Decode As... > TCP port > DROPSYNC" works too, and a heuristic recognises
-- a connection on any port that starts with a HELLO (every dropsync client
-- sends one first); it can be switched off under Analyze > Enabled Protocols
-- (dropsync_tcp) or with --disable-heuristic dropsync_tcp.
--
-- Secure mode (TLS 1.3 on the same two ports, told apart by the first byte,
-- 0x16, as the server does). A TLS connection to either port is handed to
-- Wireshark's TLS dissector, which gives the decrypted application data back
-- to this one (the ports are in the "tls.port" table too). To decrypt, run
-- the server or the client (either is enough: both write the secrets of
-- both directions) with SSLKEYLOGFILE set, e.g.
--     SSLKEYLOGFILE=/tmp/keys ./server 9000 9001 --root R
-- and give that file to Wireshark: Edit > Preferences > Protocols > TLS >
-- (Pre)-Master-Secret log filename, or per run
--     tshark -o tls.keylog_file:/tmp/keys -X lua_script:dropsync.lua -r capture.pcapng
-- Without it the messages stay encrypted: Wireshark shows TLS only. On other
-- ports, TLS's own heuristic finds the connection and a heuristic on "tls"
-- (dropsync_tls) recognises one whose first decrypted data is a HELLO.
--
-- Every frame type is dissected field by field (filter names in brackets):
--   type [dropsync.type], digest [dropsync.md5], chunk size [dropsync.size],
--   name length [dropsync.name_len], name [dropsync.name], payload
--   [dropsync.payload], status code [dropsync.status] with one flag per bit
--   [dropsync.status.ok ... dropsync.status.keep_alive] and the bits no flag
--   names [dropsync.status.unknown], client id [dropsync.client_id], label
--   length [dropsync.label_len], label [dropsync.label], and a COPY's source
--   name length [dropsync.from_len] and source name [dropsync.from] (its
--   target is dropsync.name, so a filter on a name finds COPYs to it too).
-- COPY [ext] (type 8) is the extension of PROTOCOL.md "Copies and renames
-- without their bytes": a whole transfer in one message, `name` to hold the
-- content `from` has; its offer is a REQUEST of .dropsync-ext/copy, shown as
-- a REQUEST like any other (that reserved name is not flagged there). So are
-- the REQUESTs of META-DATA since a version [ext]: .dropsync-ext/index, and
-- .dropsync-ext/index/<store>/<upto>, with /more or without.
-- Generated: whole message length [dropsync.length], connection and direction
-- [dropsync.connection, dropsync.direction] when the ports say, and for a
-- STATUS the message it answers (replies come back in order on the same
-- connection) [dropsync.reply_to, dropsync.reply_to.message]; for a message,
-- the frame of its reply once known [dropsync.reply_in].
--
-- Messages split across TCP segments are reassembled, and several messages in
-- one segment are each dissected (dissect_tcp_pdus). A type this protocol
-- lacks cannot be skipped (its length is unknown): the rest of the segment is
-- shown as undecodable and flagged as a malformed-packet error, like every
-- error here [dropsync.expert.*]; protocol rule breaks (bad names, sizes,
-- unknown status bits, a STATUS nothing waits for) are warnings.
--
-- Tested with Wireshark 4.0 (Debian 12, Lua 5.2); written for 3.x and later
-- (Lua 5.2 to 5.4).

local dropsync = Proto("dropsync", "dropsync folder sync")

---------------------------------------------------------------------------
-- Constants (dropsync-proto: frame.rs, status.rs, limits.rs)
---------------------------------------------------------------------------

local T_CHUNK, T_STATUS, T_FINISHED, T_ABORT, T_DELETE, T_REQUEST, T_HELLO, T_COPY = 1, 2, 3, 4, 5, 6, 7, 8

local type_names = {
    [T_CHUNK] = "FILE_CHUNK",
    [T_STATUS] = "STATUS",
    [T_FINISHED] = "FINISHED",
    [T_ABORT] = "ABORT",
    [T_DELETE] = "DELETE",
    [T_REQUEST] = "REQUEST",
    [T_HELLO] = "HELLO",
    [T_COPY] = "COPY",
}

-- Fixed part of each type: what must be present before the length is known.
-- FILE_CHUNK: type 2 + md5 16 + size 4 + name_len 2; the named frames and
-- HELLO: type 2 + md5/id 16 + len 2; STATUS: type 2 + code 2 (complete).
-- COPY: type 2 + md5 16 + from_len 2 + name_len 2, with `from` between the
-- two lengths: its length is known in two steps (NAMED_HEAD bytes give
-- from_len, then NAMED_HEAD + from_len + 2 give name_len).
local CHUNK_HEAD = 24
local NAMED_HEAD = 20
local COPY_HEAD = 22
local STATUS_LEN = 4

local MAX_NAME_LEN = 4096            -- PROTOCOL.md section 3
local DEFAULT_MAX_CHUNK = 16 * 1024 * 1024 -- section 4 (servers may differ)
local METADATA_NAME = ".dropsync-metadata"
local COPY_OFFER_NAME = ".dropsync-ext/copy" -- [ext] REQUESTed to offer COPY
local INDEX_NAME = ".dropsync-ext/index" -- [ext] META-DATA since a version

-- STATUS codes are bit flags (section 8). Order = display order.
local status_flags = {
    { 0x0001, "ok", "OK" },
    { 0x0002, "resend_checksum", "resend: checksum incorrect" },
    { 0x0004, "resend_size", "resend: invalid chunk size" },
    { 0x0008, "abort_checksum", "abort: 3 incorrect checksums" },
    { 0x0010, "abort_size", "abort: 3 invalid chunks" },
    { 0x0020, "no_file", "no file to delete" },
    { 0x0040, "locked", "abort: file locked" },
    { 0x0080, "in_use", "abort: file in use" },
    { 0x0100, "bad_request", "abort: bad request" },
    { 0x8000, "keep_alive", "keep-alive" },
}
local KEEP_ALIVE = 0x8000
local KNOWN_BITS = 0x81FF
local UNKNOWN_BITS = 0x7E00

-- Bit operations for Lua 5.2 (bit32) and 5.3+ (operators, loaded as text so
-- that 5.2 still parses this file).
local band = (bit32 and bit32.band) or (bit and bit.band)
    or load("return function(a, b) return a & b end")()

---------------------------------------------------------------------------
-- Fields
---------------------------------------------------------------------------

local f = {
    type = ProtoField.uint16("dropsync.type", "Type", base.HEX, type_names),
    md5 = ProtoField.bytes("dropsync.md5", "Digest (MD5)", base.NONE,
        "FILE_CHUNK: MD5 of the payload; FINISHED: of the whole file; DELETE/REQUEST: of the sender's version or zeros; ABORT: zeros; COPY: of the content copied"),
    size = ProtoField.uint32("dropsync.size", "Chunk size", base.DEC, nil, nil, "Payload length of a FILE_CHUNK"),
    name_len = ProtoField.uint16("dropsync.name_len", "Name length", base.DEC),
    name = ProtoField.string("dropsync.name", "Name", base.UNICODE),
    from_len = ProtoField.uint16("dropsync.from_len", "Source name length", base.DEC, nil, nil,
        "COPY: length of the name the content is copied from"),
    from = ProtoField.string("dropsync.from", "Source name", base.UNICODE, "COPY: the name the content is copied from"),
    payload = ProtoField.bytes("dropsync.payload", "Payload"),
    status = ProtoField.uint16("dropsync.status", "Status code", base.HEX),
    status_unknown = ProtoField.uint16("dropsync.status.unknown", "Unknown bits", base.HEX, nil, UNKNOWN_BITS),
    client_id = ProtoField.bytes("dropsync.client_id", "Client id"),
    label_len = ProtoField.uint16("dropsync.label_len", "Label length", base.DEC),
    label = ProtoField.string("dropsync.label", "Label", base.UNICODE),
    undecoded = ProtoField.bytes("dropsync.undecoded", "Undecodable data"),
    -- generated
    length = ProtoField.uint32("dropsync.length", "Message length", base.DEC),
    connection = ProtoField.string("dropsync.connection", "Connection"),
    direction = ProtoField.string("dropsync.direction", "Direction"),
    reply_to = ProtoField.framenum("dropsync.reply_to", "In reply to frame", base.NONE, frametype and frametype.REQUEST),
    reply_to_msg = ProtoField.string("dropsync.reply_to.message", "In reply to"),
    reply_in = ProtoField.framenum("dropsync.reply_in", "Reply in frame", base.NONE, frametype and frametype.RESPONSE),
}
local flag_fields = {}
for _, flag in ipairs(status_flags) do
    local field = ProtoField.bool("dropsync.status." .. flag[2], flag[3], 16, nil, flag[1])
    flag_fields[#flag_fields + 1] = field
    f["status_" .. flag[2]] = field
end

local fields = {}
for _, field in pairs(f) do fields[#fields + 1] = field end
dropsync.fields = fields

local ex = {
    unknown_type = ProtoExpert.new("dropsync.expert.unknown_type",
        "Unknown message type: its length is unknown, the connection cannot be resynchronised",
        expert.group.MALFORMED, expert.severity.ERROR),
    too_long = ProtoExpert.new("dropsync.expert.too_long",
        "Declared length does not fit in the captured data",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_name = ProtoExpert.new("dropsync.expert.bad_name",
        "Name breaks the naming rules (PROTOCOL.md section 3); the receiver answers 0x0100",
        expert.group.PROTOCOL, expert.severity.WARN),
    bad_utf8 = ProtoExpert.new("dropsync.expert.bad_utf8",
        "Not UTF-8", expert.group.PROTOCOL, expert.severity.WARN),
    bad_size = ProtoExpert.new("dropsync.expert.bad_size",
        "Chunk size 0 or above the default 16 MiB maximum; the receiver answers 0x0004",
        expert.group.PROTOCOL, expert.severity.WARN),
    unknown_status = ProtoExpert.new("dropsync.expert.unknown_status",
        "Status code with bits no flag names", expert.group.PROTOCOL, expert.severity.WARN),
    unmatched_status = ProtoExpert.new("dropsync.expert.unmatched_status",
        "STATUS that answers no outstanding message on this connection",
        expert.group.SEQUENCE, expert.severity.WARN),
    abort_digest = ProtoExpert.new("dropsync.expert.abort_digest",
        "ABORT digest is not zeros (receivers ignore it)", expert.group.PROTOCOL, expert.severity.NOTE),
    status_info = ProtoExpert.new("dropsync.expert.status",
        "Status other than OK", expert.group.RESPONSE_CODE, expert.severity.NOTE),
}
local experts = {}
for _, e in pairs(ex) do experts[#experts + 1] = e end
dropsync.experts = experts

---------------------------------------------------------------------------
-- Preferences and registration
---------------------------------------------------------------------------

dropsync.prefs.send_port = Pref.uint("Send port", 9000,
    "TCP port clients send files to: the server's first argument (default 9000). 0: none.")
dropsync.prefs.receive_port = Pref.uint("Receive port", 9001,
    "TCP port clients receive files from: the server's second argument (default 9001). 0: none.")

local tcp_port_table = DissectorTable.get("tcp.port")
-- Secure mode: TLS hands its decrypted application data to the dissector it
-- finds for the port in "tls.port" ("ssl.port" before Wireshark 3.0).
local tls_port_table = DissectorTable.get("tls.port") or DissectorTable.get("ssl.port")
local registered_ports = {}

local function register_ports()
    for _, port in ipairs(registered_ports) do
        tcp_port_table:remove(port, dropsync)
        if tls_port_table then tls_port_table:remove(port, dropsync) end
    end
    registered_ports = {}
    for _, port in ipairs({ dropsync.prefs.send_port, dropsync.prefs.receive_port }) do
        if port ~= 0 then
            tcp_port_table:add(port, dropsync)
            if tls_port_table then tls_port_table:add(port, dropsync) end
            registered_ports[#registered_ports + 1] = port
        end
    end
end

---------------------------------------------------------------------------
-- Helpers
---------------------------------------------------------------------------

-- True when s is well-formed UTF-8 (Lua 5.2 has no utf8 library).
local function is_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local extra, min
        if c < 0x80 then
            extra = 0
        elseif c >= 0xC2 and c <= 0xDF then
            extra, min = 1, 0x80
        elseif c >= 0xE0 and c <= 0xEF then
            extra, min = 2, 0x800
        elseif c >= 0xF0 and c <= 0xF4 then
            extra, min = 3, 0x10000
        else
            return false
        end
        if i + extra > n then return false end
        local cp = (extra == 1 and c - 0xC0) or (extra == 2 and c - 0xE0) or (extra == 3 and c - 0xF0) or c
        for k = 1, extra do
            local cc = s:byte(i + k)
            if cc < 0x80 or cc > 0xBF then return false end
            cp = cp * 64 + (cc - 0x80)
        end
        if extra > 0 and (cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF)) then
            return false
        end
        i = i + extra + 1
    end
    return true
end

-- True for the names of META-DATA since a version [ext]: every path next
-- time, an acknowledgement (/<store>/<upto>), or what changed since (/more).
local STORE_HEX = string.rep("%x", 32)
local function is_index_name(name)
    if name == INDEX_NAME then return true end
    if name:sub(1, #INDEX_NAME + 1) ~= INDEX_NAME .. "/" then return false end
    local rest = name:sub(#INDEX_NAME + 1)
    return rest:match("^/" .. STORE_HEX .. "/%d+$") ~= nil or rest:match("^/" .. STORE_HEX .. "/%d+/more$") ~= nil
end

-- The reserved names a client's REQUEST may carry [ext].
local function request_reserved_ok(name)
    return name == COPY_OFFER_NAME or is_index_name(name)
end

-- The reserved name (or the test of names) a message may carry, or nil: the
-- META-DATA transfer's from the server, the offer of COPY and the names of
-- META-DATA since a version [ext] in a client's REQUEST. A COPY may carry
-- none (neither is a file either side copies).
local function reserved_ok(t, from_server)
    if t == T_COPY then return nil end
    if from_server then return METADATA_NAME end
    if t == T_REQUEST then return request_reserved_ok end
    return nil
end

-- True when `name` is what `allowed` (reserved_ok) lets through.
local function is_allowed(name, allowed)
    if type(allowed) == "function" then return allowed(name) end
    return name == allowed
end

-- Why a name breaks section 3, or nil. `allowed` is the reserved name this
-- message may carry (reserved_ok), or nil.
local function name_problem(name, allowed)
    if #name == 0 then return "empty name" end
    if #name > MAX_NAME_LEN then return "longer than 4096 bytes" end
    if name:sub(1, 1) == "/" then return "leading /" end
    if name:find("\\", 1, true) then return "contains \\" end
    if name:find("\0", 1, true) then return "contains NUL" end
    local first = true
    for comp in (name .. "/"):gmatch("([^/]*)/") do
        if comp == "" then return "empty component" end
        if comp == "." or comp == ".." then return "'" .. comp .. "' component" end
        if first and comp:sub(1, 9) == ".dropsync" and not is_allowed(name, allowed) then
            return "reserved name"
        end
        first = false
    end
    return nil
end

local function hex(bytes)
    return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- "OK", "abort: file locked", "OK | abort: file locked", "unknown 0x0200"...
local function status_text(code)
    local parts = {}
    for _, flag in ipairs(status_flags) do
        if band(code, flag[1]) ~= 0 then parts[#parts + 1] = flag[3] end
    end
    local unknown = band(code, 0xFFFF - KNOWN_BITS)
    if unknown ~= 0 then parts[#parts + 1] = string.format("unknown 0x%04x", unknown) end
    if #parts == 0 then return "(none)" end
    return table.concat(parts, " | ")
end

---------------------------------------------------------------------------
-- Reply matching: every message but STATUS gets one STATUS, in order, on the
-- same connection; keep-alives never count. Computed on the first pass in
-- frame order, remembered per (frame, message index) for later passes.
---------------------------------------------------------------------------

local tcp_stream_field = Field.new("tcp.stream")
local tcp_seq_field = Field.new("tcp.seq")

local outstanding = {}  -- "<stream>:<sender port>" -> FIFO {first, last, items}
local per_pdu = {}      -- frame number -> { [index] = state }
local pdu_index = 0     -- messages dissected so far in the current frame
local current_frame = nil
local client_port_of = {} -- stream -> port of the side that sent HELLO
local tls_stream = {}     -- stream -> true when it is TLS (secure mode), false when plain
local tls_heur_stream = {} -- stream -> whether its first decrypted data was a HELLO
local inside_tls = 0      -- > 0 while the TLS dissector runs on our behalf

local function stream_id()
    local s = tcp_stream_field()
    return s and tostring(s.value) or "?"
end

local function fifo(key)
    local q = outstanding[key]
    if not q then
        q = { first = 1, last = 0 }
        outstanding[key] = q
    end
    return q
end

function dropsync.init()
    outstanding = {}
    per_pdu = {}
    pdu_index = 0
    current_frame = nil
    client_port_of = {}
    tls_stream = {}
    tls_heur_stream = {}
    inside_tls = 0
end

---------------------------------------------------------------------------
-- Length of one message (for dissect_tcp_pdus)
---------------------------------------------------------------------------

-- Returns the whole message length, 0 when more bytes are needed to know it,
-- or the rest of the segment for an unknown type (dissected as an error).
local function get_pdu_len(tvb, pinfo, offset)
    local remaining = tvb:len() - offset
    local t = tvb(offset, 2):le_uint()
    local head
    if t == T_STATUS then
        return STATUS_LEN
    elseif t == T_CHUNK then
        head = CHUNK_HEAD
    elseif type_names[t] then
        head = NAMED_HEAD
    else
        return remaining
    end
    if remaining < head then
        if pinfo.can_desegment > 0 then return 0 end
        return remaining -- cannot reassemble here: dissect what there is
    end
    local len
    if t == T_CHUNK then
        len = CHUNK_HEAD + tvb(offset + 22, 2):le_uint() + tvb(offset + 18, 4):le_uint()
    elseif t == T_COPY then
        -- name_len follows `from`: a second step, as the first did above.
        local from_len = tvb(offset + 18, 2):le_uint()
        if remaining < COPY_HEAD + from_len then
            if pinfo.can_desegment > 0 then return 0 end
            return remaining
        end
        len = COPY_HEAD + from_len + tvb(offset + NAMED_HEAD + from_len, 2):le_uint()
    else
        len = NAMED_HEAD + tvb(offset + 18, 2):le_uint()
    end
    if len > 0xFFFFFFFF then return remaining end
    return len
end

---------------------------------------------------------------------------
-- One message
---------------------------------------------------------------------------

-- Adds a name or label; returns the item, its raw bytes (for the checks) and
-- its text for display (invalid UTF-8 shown with replacement characters).
local function add_string(tree, field, tvb, off, len)
    if len == 0 then
        return tree:add(field, tvb(off - 2, 2), ""):set_generated(), "", ""
    end
    local range = tvb(off, len)
    local raw = range:raw()
    local text = range:string(ENC_UTF_8)
    local item = tree:add(field, range, text)
    if not is_utf8(raw) then
        item:add_proto_expert_info(ex.bad_utf8)
    end
    return item, raw, text
end

local function describe_connection(pinfo, tree)
    local sp, rp = dropsync.prefs.send_port, dropsync.prefs.receive_port
    local conn, dir
    if sp ~= 0 and pinfo.dst_port == sp then
        conn, dir = "send", "client -> server"
    elseif sp ~= 0 and pinfo.src_port == sp then
        conn, dir = "send", "server -> client"
    elseif rp ~= 0 and pinfo.dst_port == rp then
        conn, dir = "receive", "client -> server"
    elseif rp ~= 0 and pinfo.src_port == rp then
        conn, dir = "receive", "server -> client"
    else
        local cp = client_port_of[stream_id()]
        if cp == pinfo.src_port then
            dir = "client -> server"
        elseif cp == pinfo.dst_port then
            dir = "server -> client"
        end
    end
    if conn then tree:add(f.connection, conn):set_generated() end
    if dir then tree:add(f.direction, dir):set_generated() end
    return dir
end

local function set_info(pinfo, text)
    if pdu_index == 1 then
        -- TLS fences its note on a record that starts the next message.
        if tostring(pinfo.cols.info):find("TLS segment of a reassembled PDU]", 1, true) then
            pinfo.cols.info:append(", " .. text)
        else
            pinfo.cols.info:set(text)
        end
    else
        pinfo.cols.info:append(", " .. text)
    end
end

local function dissect_pdu(tvb, pinfo, root)
    pinfo.cols.protocol:set("DROPSYNC")
    if current_frame ~= pinfo.number then
        current_frame = pinfo.number
        pdu_index = 0
    end
    pdu_index = pdu_index + 1

    local len = tvb:len()
    local tree = root:add(dropsync, tvb())
    local t = tvb(0, 2):le_uint()
    local type_item = tree:add_le(f.type, tvb(0, 2))
    tree:add(f.length, len):set_generated()
    local dir = describe_connection(pinfo, tree)
    local from_server = dir == "server -> client"
    local summary
    local state_key = pdu_index
    local frame_state = per_pdu[pinfo.number]
    if not frame_state then
        frame_state = {}
        per_pdu[pinfo.number] = frame_state
    end
    local stream = stream_id()
    local expects_reply = false

    if t == T_STATUS then
        local code = tvb(2, 2):le_uint()
        local st_item = tree:add_le(f.status, tvb(2, 2))
        st_item:append_text(" (" .. status_text(code) .. ")")
        for _, field in ipairs(flag_fields) do
            st_item:add_le(field, tvb(2, 2))
        end
        st_item:add_le(f.status_unknown, tvb(2, 2))
        if band(code, UNKNOWN_BITS) ~= 0 or code == 0 then
            st_item:add_proto_expert_info(ex.unknown_status)
        elseif code ~= 0x0001 and code ~= KEEP_ALIVE then
            st_item:add_proto_expert_info(ex.status_info, "Status " .. string.format("0x%04x", code) .. " " .. status_text(code))
        end
        summary = string.format("STATUS 0x%04x %s", code, status_text(code))
        if code ~= KEEP_ALIVE then
            -- The reply to the oldest outstanding message the other side sent.
            if not pinfo.visited and frame_state[state_key] == nil then
                local q = fifo(stream .. ":" .. pinfo.dst_port)
                local st = {}
                if q.first <= q.last then
                    local req = q[q.first]
                    q[q.first] = nil
                    q.first = q.first + 1
                    st.reply_to, st.reply_to_msg = req.frame, req.text
                    req.state.reply_in = pinfo.number
                end
                frame_state[state_key] = st
            end
            local st = frame_state[state_key] or {}
            if st.reply_to then
                tree:add(f.reply_to, st.reply_to):set_generated()
                tree:add(f.reply_to_msg, st.reply_to_msg):set_generated()
            elseif frame_state[state_key] then
                tree:add_proto_expert_info(ex.unmatched_status)
            end
        end
    elseif t == T_CHUNK then
        tree:add(f.md5, tvb(2, 16))
        local size = tvb(18, 4):le_uint()
        local size_item = tree:add_le(f.size, tvb(18, 4))
        if size == 0 or size > DEFAULT_MAX_CHUNK then size_item:add_proto_expert_info(ex.bad_size) end
        local name_len = tvb(22, 2):le_uint()
        tree:add_le(f.name_len, tvb(22, 2))
        if CHUNK_HEAD + name_len + size > len then
            tree:add_proto_expert_info(ex.too_long)
            summary = "FILE_CHUNK (truncated)"
        else
            local name_item, name, text = add_string(tree, f.name, tvb, CHUNK_HEAD, name_len)
            local why = name_problem(name, reserved_ok(t, from_server))
            if why then name_item:add_proto_expert_info(ex.bad_name, "Bad name: " .. why) end
            if size > 0 then tree:add(f.payload, tvb(CHUNK_HEAD + name_len, size)) end
            summary = string.format("FILE_CHUNK %s (%d bytes)", text, size)
        end
        expects_reply = true
    elseif t == T_HELLO then
        tree:add(f.client_id, tvb(2, 16))
        local label_len = tvb(18, 2):le_uint()
        tree:add_le(f.label_len, tvb(18, 2))
        if NAMED_HEAD + label_len > len then
            tree:add_proto_expert_info(ex.too_long)
            summary = "HELLO (truncated)"
        else
            local _, _, label = add_string(tree, f.label, tvb, NAMED_HEAD, label_len)
            summary = string.format("HELLO %s %s", label ~= "" and label or "(no label)", hex(tvb(2, 16):raw()))
        end
        if not pinfo.visited and client_port_of[stream] == nil then
            client_port_of[stream] = pinfo.src_port
        end
        expects_reply = true
    elseif t == T_COPY then
        tree:add(f.md5, tvb(2, 16))
        local from_len = tvb(18, 2):le_uint()
        tree:add_le(f.from_len, tvb(18, 2))
        local name_at = NAMED_HEAD + from_len -- offset of name_len
        if name_at + 2 > len then
            tree:add_proto_expert_info(ex.too_long)
            summary = "COPY (truncated)"
        else
            local name_len = tvb(name_at, 2):le_uint()
            if COPY_HEAD + from_len + name_len > len then
                tree:add_le(f.name_len, tvb(name_at, 2))
                tree:add_proto_expert_info(ex.too_long)
                summary = "COPY (truncated)"
            else
                local allowed = reserved_ok(t, from_server)
                local from_item, from, from_text = add_string(tree, f.from, tvb, NAMED_HEAD, from_len)
                local why = name_problem(from, allowed)
                if why then from_item:add_proto_expert_info(ex.bad_name, "Bad source name: " .. why) end
                tree:add_le(f.name_len, tvb(name_at, 2))
                local name_item, name, text = add_string(tree, f.name, tvb, name_at + 2, name_len)
                why = name_problem(name, allowed)
                if why then name_item:add_proto_expert_info(ex.bad_name, "Bad name: " .. why) end
                summary = string.format('COPY "%s" -> "%s"', from_text, text)
            end
        end
        expects_reply = true
    elseif type_names[t] then
        local digest = tvb(2, 16)
        local md5_item = tree:add(f.md5, digest)
        if t == T_ABORT and digest:raw() ~= string.rep("\0", 16) then
            md5_item:add_proto_expert_info(ex.abort_digest)
        end
        local name_len = tvb(18, 2):le_uint()
        tree:add_le(f.name_len, tvb(18, 2))
        if NAMED_HEAD + name_len > len then
            tree:add_proto_expert_info(ex.too_long)
            summary = type_names[t] .. " (truncated)"
        else
            local name_item, name, text = add_string(tree, f.name, tvb, NAMED_HEAD, name_len)
            local why = name_problem(name, reserved_ok(t, from_server))
            if why then name_item:add_proto_expert_info(ex.bad_name, "Bad name: " .. why) end
            summary = type_names[t] .. " " .. text
        end
        expects_reply = true
    else
        type_item:add_proto_expert_info(ex.unknown_type)
        if len > 2 then tree:add(f.undecoded, tvb(2, len - 2)) end
        summary = string.format("Unknown type 0x%04x", t)
    end

    if expects_reply then
        if not pinfo.visited and frame_state[state_key] == nil then
            local st = {}
            frame_state[state_key] = st
            local q = fifo(stream .. ":" .. pinfo.src_port)
            q.last = q.last + 1
            q[q.last] = { frame = pinfo.number, text = summary, state = st }
        end
        local st = frame_state[state_key]
        if st and st.reply_in then
            tree:add(f.reply_in, st.reply_in):set_generated()
        end
    end

    tree:append_text(", " .. summary)
    set_info(pinfo, summary)
    return len
end

---------------------------------------------------------------------------
-- Entry points
---------------------------------------------------------------------------

-- The messages in `tvb`: a plain connection's TCP payload, or a secure
-- one's decrypted TLS application data (TLS reassembles across records as
-- TCP does across segments).
local function dissect_messages(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, STATUS_LEN, get_pdu_len, dissect_pdu, true)
    return tvb:len()
end

-- Secure mode: a connection to either port may be TLS instead, told apart
-- by its first byte as the server does (0x16, a ClientHello's handshake
-- record, is no message type). Decided per TCP stream at the first bytes
-- seen on the first pass; a capture that starts inside a TLS connection is
-- recognised by any record header (content type 20-23, version 3.x).
local tls_handle, tls_name = nil, nil
for _, name in ipairs({ "tls", "ssl" }) do
    local ok, handle = pcall(Dissector.get, name)
    if ok and handle then
        tls_handle, tls_name = handle, name
        break
    end
end

local function is_tls(tvb, pinfo)
    local stream = stream_id()
    local known = tls_stream[stream]
    if known == nil then
        if pinfo.visited or tvb:len() < 3 then return false end
        local ct, major, minor = tvb(0, 1):uint(), tvb(1, 1):uint(), tvb(2, 1):uint()
        known = tls_handle ~= nil and ct >= 20 and ct <= 23 and major == 3 and minor <= 4
        tls_stream[stream] = known
    end
    return known
end

-- Hands a TLS connection's bytes to the TLS dissector, which decrypts them
-- (with the key log: Edit > Preferences > Protocols > TLS > (Pre)-Master-
-- Secret log filename) and gives the application data back to this
-- dissector through "tls.port" (or the "tls" heuristic below).
local function dissect_tls(tvb, pinfo, tree)
    -- TLS reassembles records that span segments through TCP, which offers
    -- that only to the dissector it calls: give back the level the call
    -- took away, as TCP-proxying dissectors do.
    if pinfo.can_desegment > 0 then pinfo.can_desegment = pinfo.can_desegment + 1 end
    inside_tls = inside_tls + 1
    local ok, err = pcall(function() tls_handle:call(tvb, pinfo, tree) end)
    inside_tls = inside_tls - 1
    if not ok then error(err, 0) end
    return tvb:len()
end

-- Called by TCP for the ports (and for a stream the heuristic claimed), and
-- by TLS with decrypted data for the ports in "tls.port".
function dropsync.dissector(tvb, pinfo, tree)
    if inside_tls == 0 and is_tls(tvb, pinfo) then
        return dissect_tls(tvb, pinfo, tree)
    end
    return dissect_messages(tvb, pinfo, tree)
end

-- True when `tvb` starts with a HELLO whose label is printable UTF-8;
-- `whole`: and holds nothing else.
local function starts_with_hello(tvb, whole)
    local len = tvb:len()
    if len < NAMED_HEAD or tvb(0, 2):le_uint() ~= T_HELLO then return false end
    local hello_len = NAMED_HEAD + tvb(18, 2):le_uint()
    if hello_len > len or (whole and hello_len ~= len) then return false end
    if hello_len > NAMED_HEAD then
        local label = tvb(NAMED_HEAD, hello_len - NAMED_HEAD):raw()
        if label:find("[%z\1-\31\127]") or not is_utf8(label) then return false end
    end
    return true
end

-- A connection on any port whose first segment is exactly one HELLO
-- (type 7, 16-byte id, a printable label filling the rest) is dropsync.
local function heuristic(tvb, pinfo, tree)
    if not starts_with_hello(tvb, true) then return false end
    local seq = tcp_seq_field()
    if seq and seq.value ~= 1 then return false end
    pinfo.conversation = dropsync
    dropsync.dissector(tvb, pinfo, tree)
    return true
end

-- A TLS connection on any port (found by TLS's own heuristic, or by "Decode
-- As... > TCP port > TLS") whose first decrypted data starts with a HELLO is
-- dropsync; TLS asks again for each record, and the answer stays the same.
local function heuristic_tls(tvb, pinfo, tree)
    local stream = stream_id()
    local ours = tls_heur_stream[stream]
    if ours == nil then
        if pinfo.visited then return false end
        ours = starts_with_hello(tvb, false)
        tls_heur_stream[stream] = ours
    end
    if not ours then return false end
    dissect_messages(tvb, pinfo, tree)
    return true
end

-- Resets the per-frame message counter after each frame, so that a frame
-- dissected again (a click in the GUI) numbers its messages the same way.
local frame_end = Proto("dropsync_frame_end", "dropsync: end of frame (internal)")
function frame_end.dissector()
    current_frame = nil
end
register_postdissector(frame_end)

dropsync.prefs_changed = register_ports
register_ports()
dropsync:register_heuristic("tcp", heuristic)
if tls_handle then dropsync:register_heuristic(tls_name, heuristic_tls) end
