package wire_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// A request goes out with typed __mms fields; a Node reply (sequence as int8) comes back
// as string metadata that MMSFromMetadata reads.
func ExampleCodec() {
	var codec wire.Codec

	req := message.NewMessage("9f0c1a52-7d3e-4b8a-a1c2-3d4e5f6a7b8c", []byte(`{"a":1}`))
	req.Metadata[wire.MetaCorrelationID] = "c-1"
	req.Metadata[wire.MetaReplyTo] = wire.ReplyQueue("caller", "i-1")
	req.Metadata[wire.MetaExpiration] = "300"
	req.Metadata[wire.HeaderIDRequest] = "r-1"
	wire.MMS{Route: "echo", IAT: 1764158400000, EAT: 1764158400300}.SetMetadata(req.Metadata)

	p, err := codec.Marshal(req)
	if err != nil {
		panic(err)
	}
	fmt.Println("publish to", wire.RequestQueue("svc", "echo"), "as", p.ContentType, "expiring in", p.Expiration, "ms")
	mms := p.Headers[wire.HeaderMMS].(amqp.Table)
	for _, k := range slices.Sorted(maps.Keys(mms)) {
		fmt.Printf("  __mms.%s = %T(%v)\n", k, mms[k], mms[k])
	}

	reply, err := codec.Unmarshal(amqp.Delivery{
		ContentType: wire.ContentType, CorrelationId: "c-1",
		Headers: amqp.Table{
			"idRequest": "r-1",
			"__mms":     amqp.Table{"isError": false, "isEnd": true, "sequence": int8(0)},
		},
		Body: []byte(`{"a":1}`),
	})
	if err != nil {
		panic(err)
	}
	var keys []string
	for k, v := range reply.Metadata {
		if strings.HasPrefix(k, wire.MetaMMSPrefix) {
			keys = append(keys, k+"="+v)
		}
	}
	slices.Sort(keys)
	fmt.Println("reply:", strings.Join(keys, " "), string(reply.Payload))
	m, err := wire.MMSFromMetadata(reply.Metadata)
	fmt.Println("final:", m.IsEnd && !m.IsError, "sequence:", *m.Sequence, err)
	// Output:
	// publish to q.requests.svc.echo as application/json expiring in 300 ms
	//   __mms.eat = int64(1764158400300)
	//   __mms.iat = int64(1764158400000)
	//   __mms.route = string(echo)
	// reply: mms.isEnd=true mms.isError=false mms.sequence=0 {"a":1}
	// final: true sequence: 0 <nil>
}

// A handler's error crosses the wire as the Node error envelope and comes back as a
// *RemoteError.
func ExampleErrorBody() {
	body := wire.ErrorBody(&wire.RemoteError{Message: "no such user", CodeString: "notFound", Code: 404})
	fmt.Println(string(body))
	re, err := wire.ParseErrorBody(body)
	fmt.Println(re, err)
	// Output:
	// {"error":{"message":"no such user","codeString":"notFound","code":404,"level":"fatal","isCustomError":true}}
	// remote error: no such user (notFound, code 404) <nil>
}
