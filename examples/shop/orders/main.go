// Command orders implements shop.v1.Orders (../proto/shop/v1/orders.proto): it takes
// orders, using every kind of door out of the sandbox that okra.toml asks for:
//
//   - okra.call: reserves stock from shop.v1.Inventory through the typed client that
//     okra build generates for a declared dependency (shopv1.NewInventoryClient);
//   - okra.config: the currency, unit price and payment provider URL, which an operator
//     can change at deploy (okra dev/serve --config orders:unit_price_cents=990);
//   - okra.secrets: the payment provider's token, never in code or configuration;
//   - okra.http: the charge, a POST to the payment provider, which must be on the
//     allow-list in okra.toml;
//   - okra.state: the orders themselves, and the counter that numbers them;
//   - okra.time and okra.metrics: when an order was placed, and how many were.
package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	shopv1 "orders/gen/shop/v1"

	"okra.dev/sdk/okra"
)

const orderPrefix = "order/"

var (
	inventory    = shopv1.NewInventoryClient(okra.WithTimeout(5 * time.Second))
	ordersPlaced = okra.NewCounter("orders_placed_total", "currency", "payment")
)

type orders struct{}

func (orders) PlaceOrder(ctx *okra.Context, req *shopv1.PlaceOrderRequest) (*shopv1.Order, error) {
	if req.Customer == "" || req.Sku == "" {
		return nil, okra.Errorf(okra.InvalidArgument, "customer and sku must not be empty")
	}
	if req.Quantity <= 0 {
		return nil, okra.Errorf(okra.InvalidArgument, "quantity must be positive, got %d", req.Quantity)
	}
	price, err := strconv.ParseInt(okra.ConfigOr("unit_price_cents", "0"), 10, 64)
	if err != nil || price < 0 {
		return nil, okra.Errorf(okra.FailedPrecondition, "configuration unit_price_cents is not a price in cents")
	}
	number, err := okra.State().Increment("next_order", 1)
	if err != nil {
		return nil, err
	}
	order := &shopv1.Order{
		Id:         fmt.Sprintf("o-%08d", number), // zero-padded: listing order is id order
		Customer:   req.Customer,
		Sku:        req.Sku,
		Quantity:   req.Quantity,
		TotalCents: price * req.Quantity,
		Currency:   okra.ConfigOr("currency", "EUR"),
		PlacedAt:   okra.Now().UTC().Format(time.RFC3339),
	}
	// Not enough stock: Inventory's FAILED_PRECONDITION goes back to our caller as is.
	if _, err := inventory.Reserve(ctx, &shopv1.ReserveRequest{
		Sku: req.Sku, Quantity: req.Quantity, OrderId: order.Id,
	}); err != nil {
		return nil, err
	}
	if url := okra.ConfigOr("payment_url", ""); url == "" {
		order.Payment = shopv1.PaymentStatus_PAYMENT_STATUS_NOT_CHARGED
	} else {
		reference, err := charge(url, order)
		if err != nil {
			// Put the stock back; the order is not placed.
			if _, rerr := inventory.Release(ctx, &shopv1.ReleaseRequest{Sku: req.Sku, OrderId: order.Id}); rerr != nil {
				ctx.Log().Error("could not release a reservation", okra.String("order", order.Id), okra.Err(rerr))
			}
			return nil, err
		}
		order.Payment = shopv1.PaymentStatus_PAYMENT_STATUS_PAID
		order.PaymentReference = reference
	}
	data, err := order.Marshal()
	if err != nil {
		return nil, err
	}
	if _, err := okra.State().Set(orderPrefix+order.Id, data); err != nil {
		return nil, err
	}
	ordersPlaced.Inc(order.Currency, order.Payment.String())
	ctx.Log().Info("order placed", okra.String("id", order.Id), okra.String("sku", order.Sku),
		okra.Int64("total_cents", order.TotalCents))
	return order, nil
}

// charge asks the payment provider at url to charge the order; returns its reference.
func charge(url string, order *shopv1.Order) (string, error) {
	token, err := okra.SecretString("PAYMENT_TOKEN")
	if err != nil {
		return "", okra.Errorf(okra.FailedPrecondition,
			"payment_url is set, but the secret PAYMENT_TOKEN cannot be read: %v", err)
	}
	body, _ := json.Marshal(map[string]any{
		"order_id": order.Id, "amount_cents": order.TotalCents, "currency": order.Currency,
	})
	resp, err := okra.HTTP().Do(&okra.HTTPRequest{
		Method: "POST",
		URL:    url,
		Header: []okra.HTTPHeader{
			{Name: "Authorization", Value: "Bearer " + token},
			{Name: "Content-Type", Value: "application/json"},
		},
		Body: body,
	})
	if err != nil {
		return "", err // e.g. PERMISSION_DENIED: the URL is not on the allow-list
	}
	if resp.Status != 200 && resp.Status != 201 {
		return "", okra.Errorf(okra.Aborted, "the payment provider declined the charge: HTTP %d %s",
			resp.Status, truncate(string(resp.Body), 200))
	}
	var answer struct {
		Reference string `json:"reference"`
	}
	if err := json.Unmarshal(resp.Body, &answer); err != nil || answer.Reference == "" {
		return "", okra.Errorf(okra.Unavailable, "the payment provider answered without a reference")
	}
	return answer.Reference, nil
}

func (orders) GetOrder(ctx *okra.Context, req *shopv1.GetOrderRequest) (*shopv1.Order, error) {
	entry, found, err := okra.State().Get(orderPrefix + req.Id)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, okra.Errorf(okra.NotFound, "no order %q", req.Id)
	}
	order := &shopv1.Order{}
	if err := order.Unmarshal(entry.Value); err != nil {
		return nil, okra.Errorf(okra.Internal, "order %s does not decode: %v", req.Id, err)
	}
	return order, nil
}

func (orders) ListOrders(ctx *okra.Context, req *shopv1.ListOrdersRequest) (*shopv1.ListOrdersReply, error) {
	size := int(req.PageSize)
	if size <= 0 {
		size = 20
	}
	if size > 100 {
		size = 100
	}
	entries, next, err := okra.State().List(orderPrefix, okra.ListOptions{Cursor: req.PageToken, Limit: size})
	if err != nil {
		return nil, err
	}
	reply := &shopv1.ListOrdersReply{NextPageToken: next}
	for _, entry := range entries {
		order := &shopv1.Order{}
		if err := order.Unmarshal(entry.Value); err != nil {
			return nil, okra.Errorf(okra.Internal, "order %s does not decode: %v", entry.Key, err)
		}
		reply.Orders = append(reply.Orders, order)
	}
	return reply, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func init() {
	shopv1.RegisterOrders(orders{})
}

func main() {}
