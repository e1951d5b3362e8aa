# Generates a cluster (kubectl List JSON) with a 2-endpoint NodePort Service "target"
# (10.96.0.10:80, NodePort 30080) and K filler Services with 1..K endpoints.
import json,sys
K=int(sys.argv[1])
items=[{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.10"}]}}]
ep=0
def svc(name,ip,n,nodeport=None):
    global ep
    port={"name":"http","port":80,"protocol":"TCP","targetPort":8080}
    if nodeport: port["nodePort"]=nodeport
    items.append({"apiVersion":"v1","kind":"Service","metadata":{"name":name,"namespace":"default"},
      "spec":{"type":"NodePort" if nodeport else "ClusterIP","clusterIP":ip,"clusterIPs":[ip],"ports":[port]}})
    eps=[]
    for _ in range(n):
        ep+=1; eps.append({"addresses":["10.200.%d.%d"%(ep//250,ep%250+1)],"conditions":{"ready":True},"nodeName":"node-b"})
    items.append({"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":name+"-x","namespace":"default","labels":{"kubernetes.io/service-name":name}},
      "addressType":"IPv4","endpoints":eps,"ports":[{"name":"http","port":8080,"protocol":"TCP"}]})
svc("target","10.96.0.10",2,30080)
for j,n in enumerate(range(1,K+1)):
    svc("f%d"%n,"10.96.%d.%d"%(1+j//250,j%250+1),n, 31000+j if j%5==0 else None)
print(json.dumps({"apiVersion":"v1","kind":"List","items":items}))
