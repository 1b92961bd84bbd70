// Package wire is the micromessaging v3 wire protocol (as spoken by the Node library
// v3.2.9) as pure code: names of queues, exchanges and routing keys, the __mms header
// table, JSON bodies with gzip, the error envelope, and Codec, which converts between
// Watermill messages and amqp091-go publishings and deliveries. It does no I/O and
// starts no goroutine.
//
// # The protocol in brief
//
// Requests and tasks of a route go through the default exchange to the durable queue
// RequestQueue(service, route) (q.requests.<service>.<route>, declared with
// RequestQueueArgs: x-expires 24 h), published with mandatory set. Replies go to the
// caller's ReplyQueue (q.replyQueue.<service>.<instanceId>) with the request's
// correlation id and no reply-to. Events go to the topic exchange EventExchange
// (x.pubSub) with routing key EventKey(target, route), one exclusive ListenQueue per
// listen. The election lock is the exclusive queue LockQueue(service).
//
// Every message has content type application/json, a JSON body (an absent body is the
// two bytes `""`; bodies over GzipThreshold = 1,000,000 bytes are gzipped with content
// encoding gzip, and gzip is accepted at any size on receive) and the header __mms, a
// field table that is always present:
//
//	request      {route, iat, eat}             + correlationId, replyTo, expiration (ms), idRequest
//	task         {route, isTask: true, iat}    + idRequest
//	reply        {isError, isEnd: true, sequence}
//	stream chunk {isError, isEnd: false, isStream: true, sequence}
//	stream end   {isError, isEnd: true, isStream: true, sequence}
//	error        {isError: true, isEnd: true, sequence}, body {"error": {...}} (ErrorBody)
//	event        {} (empty)
//
// iat and eat are milliseconds since the epoch, sequence counts reply messages from 0.
// The Node peer sends integers in the smallest signed width that fits and booleans as
// AMQP booleans; the Codec reads every width and sends int64 and bool.
//
// # Metadata keys
//
// Codec maps AMQP properties and __mms fields to Watermill metadata keys:
//
//	key                   direction  AMQP
//	mm.correlation_id     both       CorrelationId
//	mm.reply_to           both       ReplyTo
//	mm.expiration         both       Expiration: decimal milliseconds; sent only if it
//	                                 parses as a uint32 (RabbitMQ closes the channel otherwise)
//	mm.persistent         send       "true" (any strconv.ParseBool true) -> DeliveryMode 2
//	mm.content_type       receive    ContentType as it arrived (not checked; always
//	                                 application/json on send)
//	mm.content_encoding   receive    ContentEncoding as it arrived ("gzip"); the payload
//	                                 is already inflated
//	mm.redelivered        receive    Redelivered: "true"/"false", always set
//	mm.routing_key        receive    RoutingKey (when non-empty)
//	mm.exchange           receive    Exchange (absent for the default exchange)
//	mms.route             both       __mms.route   string
//	mms.iat, mms.eat      both       __mms.iat/eat int64 (decimal in metadata)
//	mms.sequence          both       __mms.sequence int64
//	mms.isTask            both       __mms.isTask   bool ("true"/"false" in metadata)
//	mms.isError           both       __mms.isError  bool
//	mms.isEnd             both       __mms.isEnd    bool
//	mms.isStream          both       __mms.isStream bool
//	mms.<other>           both       __mms.<other>: sent as a string, received rendered
//	idRequest             both       header idRequest (HeaderIDRequest)
//	any other key         both       header of that name, string value
//
// Receive-only keys and unknown keys with the mm. prefix are never sent, so metadata
// copied from a received message does not leak them. An empty mms.* value is not sent.
// Headers that arrive named mm.* or mms.* are dropped on receive (those keys belong to
// the Codec); the message UUID is MessageId (else watermill-amqp's
// _watermill_message_uuid header, else a new UUID v4) and is sent as MessageId.
// Received header values that are not strings are rendered: integers of any width and
// integral floats in decimal, booleans "true"/"false", []byte as text, nil as "", tables
// and arrays as JSON, decimals as decimal numbers, timestamps in RFC 3339.
// MMSFromMetadata and MMS.SetMetadata convert between the mms.* keys and the typed MMS.
//
// # Guarantees
//
//   - Payload bytes pass through untouched (not copied, not re-encoded, not validated as
//     JSON) except for gzip above GzipThreshold and the empty payload, which is sent as
//     `""`.
//   - A body of exactly GzipThreshold bytes is sent as it is; one byte more is gzipped.
//   - Marshal sends every __mms field with its wire type (int64, bool, string) and the
//     __mms table always; it refuses, with a *MetadataError, values the wire cannot carry
//     instead of sending something a Node peer would choke on.
//   - Unmarshal is lenient: any integer width, floats, non-string headers, a missing
//     __mms, any content type. It fails only on what cannot be read, with a
//     *DecodeError: an unknown content encoding (ErrContentEncoding), bad gzip, a body
//     that would inflate beyond Codec.MaxInflatedBytes (default 512 MiB,
//     ErrBodyTooLarge), an __mms that is not a table (ErrMMSNotTable).
//   - No input makes Marshal, Unmarshal, DecodeBody or ParseErrorBody panic (fuzzed:
//     FuzzUnmarshal, FuzzMMS, FuzzParseErrorBody, FuzzGunzip).
//   - JSON writes like JSON.stringify: no HTML escaping, untyped nil as `""`.
//   - ErrorBody always produces a valid envelope with isCustomError true, code (500 by
//     default) and level ("fatal" by default); ParseErrorBody reads whatever a Node
//     peer, or a sloppy one, sends.
//
// # Concurrency
//
// Everything in this package is safe for concurrent use: Codec is a value without
// mutable state (its gzip writers and readers come from sync.Pools), and the functions
// keep no state. Marshal and Unmarshal do not modify their argument; the messages and
// publishings they return share the payload/body slice with their input, so do not
// modify one while the other is in use.
package wire
