// Package kafkaconn gives the kafka source and the kafka target (both
// github.com/segmentio/kafka-go clients) their connections' TLS and SASL
// settings from a config.KafkaAuth.
package kafkaconn

import (
	"crypto/tls"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
)

// Settings returns the TLS configuration (nil: plain text) and the SASL
// mechanism (nil: none) a describes. Its errors are errs.Permanent: a file
// that cannot be read or a mechanism that cannot be built; they never hold
// the password.
func Settings(a config.KafkaAuth) (*tls.Config, sasl.Mechanism, error) {
	tlsCfg, err := a.TLS.ClientConfig()
	if err != nil {
		return nil, nil, errs.Permanentf("kafka TLS: %w", err)
	}
	s := a.SASL
	switch s.Mechanism {
	case "":
		return tlsCfg, nil, nil
	case config.SASLPlain:
		return tlsCfg, plain.Mechanism{Username: s.User, Password: s.Password.Value()}, nil
	case config.SASLSCRAMSHA256, config.SASLSCRAMSHA512:
		algo := scram.SHA256
		if s.Mechanism == config.SASLSCRAMSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, s.User, s.Password.Value())
		if err != nil {
			return nil, nil, errs.Permanentf("kafka SASL %s for user %q: %w", s.Mechanism, s.User, err)
		}
		return tlsCfg, m, nil
	default:
		return nil, nil, errs.Permanentf("kafka SASL: unsupported mechanism %q", s.Mechanism)
	}
}

// Transport is a kafka-go Transport (for a Writer or a Client) with a's
// TLS and SASL.
func Transport(a config.KafkaAuth, clientID string, dialTimeout time.Duration) (*kafka.Transport, error) {
	tlsCfg, mech, err := Settings(a)
	if err != nil {
		return nil, err
	}
	return &kafka.Transport{ClientID: clientID, DialTimeout: dialTimeout, TLS: tlsCfg, SASL: mech}, nil
}
