package okra

// Bindings for the okra.metrics host API: counters, gauges and histograms that the host
// exports with its own metrics (Prometheus text at GET /metrics), as
// okra_service_<name>{service="<service>", <labels>}.

import (
	"math"
	"unsafe"
)

//go:wasmimport okra.metrics record
func metricsRecord(ptr unsafe.Pointer, length int32) int32

const (
	kindCounter   = 1
	kindGauge     = 2
	kindHistogram = 3
)

// metric is what the three kinds share: the record's constant head (kind and name),
// encoded once, and the label names.
type metric struct {
	name   string
	head   []byte
	labels []string
}

// Counter is a value that only goes up (requests served, bytes sent).
type Counter struct{ m metric }

// Gauge is a value that goes up and down (items in a queue, last batch size).
type Gauge struct{ m metric }

// Histogram counts observed values (latencies, sizes) into buckets.
type Histogram struct{ m metric }

// NewCounter declares a counter called name (lower case letters, digits and '_', not
// starting with a digit) with the given label names; each record passes one value per
// label name, in the same order. Declare metrics once, as package variables:
//
//	var orders = okra.NewCounter("orders_total", "status")
//	...
//	orders.Inc("paid")
//
// Nothing reaches the host until the first record, which is when a bad name or label
// set is reported. A module that records metrics needs [host_apis."okra.metrics"].
func NewCounter(name string, labels ...string) *Counter {
	return &Counter{newMetric(kindCounter, name, labels)}
}

// NewGauge declares a gauge; see NewCounter.
func NewGauge(name string, labels ...string) *Gauge {
	return &Gauge{newMetric(kindGauge, name, labels)}
}

// NewHistogram declares a histogram; see NewCounter.
func NewHistogram(name string, labels ...string) *Histogram {
	return &Histogram{newMetric(kindHistogram, name, labels)}
}

// Add adds v (which must not be negative) to the counter of the given label values.
func (c *Counter) Add(v float64, labelValues ...string) error {
	if !(v >= 0) {
		return Errorf(InvalidArgument, "counter %s: cannot add %v (a counter only goes up)", c.m.name, v)
	}
	return c.m.record(v, labelValues)
}

// Inc adds 1 to the counter of the given label values.
func (c *Counter) Inc(labelValues ...string) error { return c.m.record(1, labelValues) }

// Set sets the gauge of the given label values to v.
func (g *Gauge) Set(v float64, labelValues ...string) error { return g.m.record(v, labelValues) }

// Observe records v in the histogram of the given label values.
func (h *Histogram) Observe(v float64, labelValues ...string) error {
	return h.m.record(v, labelValues)
}

func newMetric(kind uint64, name string, labels []string) metric {
	// MetricRecord { uint32 kind = 1; string name = 2; double value = 3;
	// repeated Label labels = 4; }
	head := []byte{0x08, byte(kind), 0x12}
	head = appendString(head, validString(name))
	return metric{name: name, head: head, labels: append([]string(nil), labels...)}
}

var metricBuf []byte // the last MetricRecord encoded; reused, so recording allocates nothing

func (m *metric) record(v float64, values []string) error {
	if len(values) != len(m.labels) {
		return Errorf(InvalidArgument, "metric %s has %d labels %v, got %d values", m.name, len(m.labels), m.labels, len(values))
	}
	b := append(metricBuf[:0], m.head...)
	b = append(b, 0x19)
	b = appendFixed64(b, math.Float64bits(v))
	for i, name := range m.labels {
		b = append(b, 0x22, 0) // Label { string name = 1; string value = 2; }
		start := len(b)
		b = append(b, 0x0a)
		b = appendString(b, validString(name))
		if values[i] != "" {
			b = append(b, 0x12)
			b = appendString(b, validString(values[i]))
		}
		b = finishDelimited(b, start)
	}
	metricBuf = b
	return HostError(metricsRecord(bytesPtr(b), int32(len(b))))
}
