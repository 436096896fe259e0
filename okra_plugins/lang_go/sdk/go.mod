module okra.dev/sdk/okra

go 1.24
