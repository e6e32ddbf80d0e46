module github.com/oneway-sync/oneway/integration

go 1.26.8
