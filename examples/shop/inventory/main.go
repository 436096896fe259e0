// Command inventory implements shop.v1.Inventory (../proto/shop/v1/inventory.proto):
// the stock of each product, kept in okra.state.
//
// It is a keyed service (okra.toml: key = { field = "sku" }): the runtime runs one call
// at a time per SKU, on that SKU's own activation, and okra.state gives each SKU its own
// namespace. So the keys below ("available", "reserved", "reservation/<order>") belong
// to one SKU, and a read followed by a write cannot race with another call for it.
// Unlike Go globals, state outlives the activation: it is there after passivation, a
// restart or a redeploy.
package main

import (
	"strconv"

	shopv1 "inventory/gen/shop/v1"

	"okra.dev/sdk/okra"
)

const (
	keyAvailable      = "available"    // units that can be reserved (a counter)
	keyReserved       = "reserved"     // units reserved by orders (a counter)
	reservationPrefix = "reservation/" // reservation/<order id> -> units reserved
)

type inventory struct{}

func (inventory) Restock(ctx *okra.Context, req *shopv1.RestockRequest) (*shopv1.Stock, error) {
	if req.Quantity <= 0 {
		return nil, okra.Errorf(okra.InvalidArgument, "quantity must be positive, got %d", req.Quantity)
	}
	if _, err := okra.State().Increment(keyAvailable, req.Quantity); err != nil {
		return nil, err
	}
	ctx.Log().Info("restocked", okra.String("sku", req.Sku), okra.Int64("quantity", req.Quantity))
	return stock(req.Sku)
}

func (inventory) Reserve(ctx *okra.Context, req *shopv1.ReserveRequest) (*shopv1.Stock, error) {
	if req.Quantity <= 0 {
		return nil, okra.Errorf(okra.InvalidArgument, "quantity must be positive, got %d", req.Quantity)
	}
	if req.OrderId == "" {
		return nil, okra.Errorf(okra.InvalidArgument, "order_id must not be empty")
	}
	state := okra.State()
	if _, found, err := state.Get(reservationPrefix + req.OrderId); err != nil {
		return nil, err
	} else if found {
		return stock(req.Sku) // reserved already: a retried call changes nothing
	}
	available, err := counter(keyAvailable)
	if err != nil {
		return nil, err
	}
	if available < req.Quantity {
		return nil, okra.Errorf(okra.FailedPrecondition,
			"only %d of %s in stock, %d asked for", available, req.Sku, req.Quantity)
	}
	if _, err := state.Increment(keyAvailable, -req.Quantity); err != nil {
		return nil, err
	}
	if _, err := state.Increment(keyReserved, req.Quantity); err != nil {
		return nil, err
	}
	quantity := strconv.FormatInt(req.Quantity, 10)
	if _, err := state.SetString(reservationPrefix+req.OrderId, quantity); err != nil {
		return nil, err
	}
	return stock(req.Sku)
}

func (inventory) Release(ctx *okra.Context, req *shopv1.ReleaseRequest) (*shopv1.Stock, error) {
	state := okra.State()
	entry, found, err := state.Get(reservationPrefix + req.OrderId)
	if err != nil || !found {
		if err == nil {
			return stock(req.Sku) // nothing reserved for the order: nothing to put back
		}
		return nil, err
	}
	quantity, err := strconv.ParseInt(string(entry.Value), 10, 64)
	if err != nil {
		return nil, okra.Errorf(okra.Internal, "reservation of %s is not a number: %v", req.OrderId, err)
	}
	if _, err := state.Increment(keyAvailable, quantity); err != nil {
		return nil, err
	}
	if _, err := state.Increment(keyReserved, -quantity); err != nil {
		return nil, err
	}
	if _, err := state.Delete(reservationPrefix + req.OrderId); err != nil {
		return nil, err
	}
	ctx.Log().Info("released", okra.String("sku", req.Sku), okra.String("order", req.OrderId))
	return stock(req.Sku)
}

func (inventory) GetStock(ctx *okra.Context, req *shopv1.GetStockRequest) (*shopv1.Stock, error) {
	return stock(req.Sku)
}

// stock reads the SKU's counters.
func stock(sku string) (*shopv1.Stock, error) {
	available, err := counter(keyAvailable)
	if err != nil {
		return nil, err
	}
	reserved, err := counter(keyReserved)
	if err != nil {
		return nil, err
	}
	return &shopv1.Stock{Sku: sku, Available: available, Reserved: reserved}, nil
}

// counter reads a counter written by Increment (a decimal number; missing: 0).
func counter(key string) (int64, error) {
	entry, found, err := okra.State().Get(key)
	if err != nil || !found {
		return 0, err
	}
	n, err := strconv.ParseInt(string(entry.Value), 10, 64)
	if err != nil {
		return 0, okra.Errorf(okra.Internal, "%s is not a number: %v", key, err)
	}
	return n, nil
}

func init() {
	shopv1.RegisterInventory(inventory{})
}

func main() {}
